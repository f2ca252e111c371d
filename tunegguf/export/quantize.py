"""Quantize a GGUF with llama.cpp's `llama_model_quantize`, in a child process.

A crash inside llama.cpp (abort on a bad tensor, out of memory) kills only the child; the
caller gets one line naming the signal or the error. Run as a module, this file is the
child: `python -m tunegguf.export.quantize SRC DST Q4_K_M [--threads N] [--imatrix FILE]`.

With an importance matrix (llama.cpp's GGUF imatrix format, see `imatrix.py`) the
quantizer weights each column's rounding error by its activations, as `llama-quantize
--imatrix` does; the file records it under `quantize.imatrix.*` like llama-quantize's.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from tunegguf import processes
from tunegguf.processes import signal_name
from tunegguf.errors import TuneGGUFError, closest
from tunegguf.io import atomic_path, require_free_disk

FTYPE_PREFIX = "LLAMA_FTYPE_MOSTLY_"
# Approximate bits per weight, only to check free disk before writing (unknown: 16).
BITS_PER_WEIGHT = {
    "F32": 32, "F16": 16, "BF16": 16, "Q8_0": 8.5, "Q6_K": 6.6, "Q5_K_M": 5.7, "Q5_K_S": 5.5,
    "Q5_0": 5.5, "Q5_1": 6.0, "Q4_K_M": 4.9, "Q4_K_S": 4.6, "Q4_0": 4.5, "Q4_1": 5.0,
    "Q3_K_L": 4.3, "Q3_K_M": 3.9, "Q3_K_S": 3.5, "Q2_K": 3.4,
}


def quant_types() -> dict[str, int]:
    """llama.cpp's file types by name (Q8_0, Q4_K_M, F16, ...) -> LLAMA_FTYPE value."""
    import llama_cpp

    types = {
        name[len(FTYPE_PREFIX):]: int(getattr(llama_cpp, name))
        for name in dir(llama_cpp)
        if name.startswith(FTYPE_PREFIX)
    }
    types["F32"] = int(llama_cpp.LLAMA_FTYPE_ALL_F32)
    return types


def resolve_quant(name: str) -> str:
    """Canonical name for a quant type given in any case; unknown -> error listing them."""
    types = quant_types()
    canonical = str(name).strip().upper()
    if canonical not in types:
        raise TuneGGUFError(
            f"unknown quant type {name!r}{closest(canonical, types)}; valid types: {', '.join(sorted(types))}"
        )
    return canonical


def expected_size(src_bytes: int, src_bits: float, quant: str) -> int:
    return int(src_bytes * BITS_PER_WEIGHT.get(quant, 16) / src_bits * 1.1)


def _describe_exit(returncode: int, log: str) -> str:
    if returncode < 0:
        return f"llama.cpp was killed by {signal_name(returncode)}"
    lines = [ln.strip() for ln in log.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if "error" in ln.lower() or "failed" in ln.lower()]
    return (errors or lines or [f"exit status {returncode}"])[-1]


def quantize_gguf(src: Path, dst: Path, quant: str, *, src_bits: float = 16, threads: int | None = None,
                  imatrix: Path | None = None) -> Path:
    """Write `dst` (atomically) as `quant` from the unquantized GGUF `src`, weighting the
    rounding by the importance matrix file `imatrix` when one is given."""
    src, dst = Path(src), Path(dst)
    quant = resolve_quant(quant)
    if not src.is_file():
        raise TuneGGUFError(f"cannot quantize {src}: the file does not exist")
    require_free_disk(dst.parent, expected_size(src.stat().st_size, src_bits, quant), f"the {quant} GGUF")
    with atomic_path(dst) as tmp:
        cmd = [sys.executable, "-m", "tunegguf.export.quantize", str(src), str(tmp), quant]
        if threads:
            cmd += ["--threads", str(threads)]
        if imatrix is not None:
            cmd += ["--imatrix", str(imatrix)]
        proc = processes.run(cmd, capture_output=True, text=True, errors="replace")
        if proc.returncode != 0:
            raise TuneGGUFError(f"quantizing {src.name} to {quant} failed: {_describe_exit(proc.returncode, proc.stdout + proc.stderr)}")
    return dst


def main(argv: list[str] | None = None) -> int:
    """The child: one llama_model_quantize call."""
    import ctypes

    import llama_cpp

    parser = argparse.ArgumentParser(prog="python -m tunegguf.export.quantize")
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("quant")
    parser.add_argument("--threads", type=int, default=0, help="0: llama.cpp's default (all cores)")
    parser.add_argument("--imatrix", default=None, help="GGUF importance matrix file")
    args = parser.parse_args(argv)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = quant_types()[args.quant.upper()]
    params.nthread = args.threads
    keep_alive = []  # the C arrays must outlive the call
    if args.imatrix:
        try:
            keep_alive = _set_imatrix(params, Path(args.imatrix))
        except TuneGGUFError as exc:  # the parent shows this line, not a traceback
            print(f"error: {exc}", file=sys.stderr)
            return 1
    rc = llama_cpp.llama_model_quantize(os.fsencode(args.src), os.fsencode(args.dst), ctypes.byref(params))
    if rc != 0:
        print(f"error: llama_model_quantize returned {rc}", file=sys.stderr)
        return 1
    return 0


def _set_imatrix(params, path: Path) -> list:
    """Point `params` at the importance matrix in `path` (null-terminated C arrays, as
    llama-quantize builds them) and record it in the output's header."""
    import ctypes

    import llama_cpp

    from tunegguf.export.imatrix import read_imatrix

    matrix = read_imatrix(path)
    means = matrix.means()
    entries = (llama_cpp.llama_model_imatrix_data * (len(means) + 1))()
    buffers = []
    for i, (name, values) in enumerate(sorted(means.items())):
        buffer = (ctypes.c_float * len(values)).from_buffer_copy(values.astype("float32").tobytes())
        buffers.append(buffer)
        entries[i].name = name.encode()
        entries[i].data = ctypes.cast(buffer, ctypes.POINTER(ctypes.c_float))
        entries[i].size = len(values)
    params.imatrix = ctypes.cast(entries, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))

    # The same keys llama-quantize writes, so any GGUF reader can tell the file used one.
    metadata = [
        ("quantize.imatrix.file", path.name),
        ("quantize.imatrix.dataset", ", ".join(matrix.datasets) or "unknown"),
        ("quantize.imatrix.entries_count", len(means)),
        ("quantize.imatrix.chunks_count", int(matrix.chunks)),
    ]
    overrides = (llama_cpp.llama_model_kv_override * (len(metadata) + 1))()
    for i, (key, value) in enumerate(metadata):
        overrides[i].key = key.encode()
        if isinstance(value, int):
            overrides[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT
            overrides[i].value.val_i64 = value
        else:
            overrides[i].tag = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR
            overrides[i].value.val_str = value.encode()[:127]
    params.kv_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    return [entries, buffers, overrides]


if __name__ == "__main__":
    sys.exit(main())
