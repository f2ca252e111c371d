"""What do tunegguf's llama.cpp backends cost or gain over a bare llama-cpp-python loop?

    .venv/bin/python benchmarks/evaluate_overhead.py [--gguf FILE] [--n 96] [--threads N] [--hf]

The same rendered SmolLM2 prompts, side by side in one run:
  * a bare loop in a fresh process: per prompt reset + eval + read the last logits +
    log-softmax (naive, no cache), and the same loop keeping the shared prefix in the KV cache;
  * tunegguf's LlamaCppBackend with n_seq_max=1 (one prompt per decode, prefix kept: the
    sequential path) and batched (n_seq_max = --batch-size sequences per llama_decode, one
    unified KV cache, the shared prefix decoded once): label scoring (`next_token_logprobs`)
    and greedy generation of --max-new-tokens tokens (`generate`);
  * with --hf, the Transformers scorer old vs new (benchmarks/hf_scoring.py's `measure`).
Model loading is excluded everywhere. Each measurement is repeated and the fastest kept,
because the 2 shared cores make single timings noisy. Prints one JSON object with the
issue's goals as ratios (labels >= 3x naive and >= 1.6x prefix; generation >= 2x sequential).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BARE_LOOP = r'''
import json, sys, time
import numpy as np
import llama_cpp
import llama_cpp.llama_cpp as lib

spec = json.load(open(sys.argv[1]))
original = lib.llama_model_default_params
def params():
    p = original()
    p.use_extra_bufts = False  # the plain kernels, as the tunegguf backends here (extra_buffers=False)
    return p
lib.llama_model_default_params = params
llm = llama_cpp.Llama(spec["gguf"], n_ctx=2048, n_threads=spec["threads"], n_threads_batch=spec["threads"],
                      logits_all=False, verbose=False)
n_vocab = llm.n_vocab()
ids = [llm.tokenize(p.encode(), add_bos=False, special=True) for p in spec["prompts"]]

def last_logprobs():
    x = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(n_vocab,)).astype(np.float64)
    top = x.max()
    return (x - top - np.log(np.exp(x - top).sum())).astype(np.float32)

def naive():
    for seq in ids:
        llm.reset()
        llm._ctx.kv_cache_seq_rm(-1, 0, -1)
        llm.eval(seq)
        last_logprobs()

def prefix():
    llm.reset()
    llm._ctx.kv_cache_seq_rm(-1, 0, -1)
    for seq in ids:
        cached = llm.input_ids[: llm.n_tokens]
        keep = 0
        while keep < min(len(cached), len(seq) - 1) and cached[keep] == seq[keep]:
            keep += 1
        llm.n_tokens = keep
        llm._ctx.kv_cache_seq_rm(-1, keep, -1)
        llm.eval(seq[keep:])
        last_logprobs()

out = {}
for name, fn in (("bare_naive", naive), ("bare_prefix_cache", prefix)):
    best = None
    for _ in range(spec["repeats"]):
        t0 = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - t0
        best = elapsed if best is None else min(best, elapsed)
    out[name] = best
print(json.dumps(out))
'''


def demo_prompts(model_dir: Path, n: int) -> list[str]:
    from transformers import AutoTokenizer

    from tunegguf.data.example import Example
    from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens

    subjects = ["headphones", "blender", "laptop", "film", "documentary", "backpack", "coffee maker", "sequel"]
    verdicts = ["is wonderful and works perfectly", "broke after two days", "is fine but the price is high",
                "was dull and far too long", "exceeded every expectation I had", "is not bad at all"]
    texts = [f"The {subjects[i % len(subjects)]} {verdicts[i % len(verdicts)]} (review {i})." for i in range(n)]
    tokens = TemplateTokens.from_hf_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    renderer = PromptRenderer(PromptConfig(), tokens, ["negative", "positive"])
    return [renderer.render(Example(id=str(i), text=t, label="positive")).prompt for i, t in enumerate(texts)]


def default_gguf(model_dir: Path) -> Path:
    from tunegguf.export.convert import convert_to_gguf
    from tunegguf.io import cache_dir

    path = cache_dir() / "bench" / "smollm2-135m-f16.gguf"
    if not path.is_file():
        convert_to_gguf(model_dir, path, "f16")
    return path


def timed_best(fn, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def cpu_record() -> dict:
    """lscpu's model name and the flags that decide llama.cpp's CPU kernels."""
    model, flags = "", []
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        out = ""
    for line in out.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            model = value.strip()
        elif key.strip() == "Flags":
            flags = sorted(f for f in value.split() if f.startswith(("avx", "amx", "f16c", "fma")))
    return {"model_name": model, "flags": flags, "cpu_count": os.cpu_count()}


def time_backend(gguf: Path, threads: int, n_seq_max: int, batches: list[list[str]], max_new_tokens: int,
                 repeats: int) -> dict:
    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend

    with LlamaCppBackend(gguf, n_threads=threads, n_seq_max=n_seq_max) as backend:
        backend.next_token_logprobs(batches[0][:2])  # warm up (first decode allocates buffers)
        labels = timed_best(lambda: [backend.next_token_logprobs(b) for b in batches], repeats)
        rows = [r for b in batches for r in backend.next_token_logprobs(b)]
        generate = timed_best(lambda: [backend.generate(b, max_new_tokens) for b in batches], repeats)
        generated = [g for b in batches for g in backend.generate(b, max_new_tokens)]
        info = backend.info
    return {"labels_s": labels, "generate_s": generate, "rows": rows, "generated": generated,
            "n_seq_max": info["n_seq_max"], "batched": info["batched"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF to time (default: SmolLM2-135M f16)")
    parser.add_argument("--n", type=int, default=96, help="number of prompts")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the backend's)")
    parser.add_argument("--batch-size", type=int, default=16,
                        help="prompts per request, and the batched backend's n_seq_max")
    parser.add_argument("--max-new-tokens", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--hf", action="store_true",
                        help="also time the Transformers scorer old vs new (benchmarks/hf_scoring.py)")
    args = parser.parse_args()

    import numpy as np

    from tunegguf.evaluate.backends.llamacpp import default_threads
    from tunegguf.models import resolve_model

    args.threads = args.threads or default_threads()
    model_dir = Path(resolve_model("smollm2-135m").path)
    gguf = args.gguf or default_gguf(model_dir)
    prompts = demo_prompts(model_dir, args.n)
    load_before = os.getloadavg()

    # The bare loop runs in a fresh process, as tunegguf's worker does (no torch beside it).
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"gguf": str(gguf), "threads": args.threads, "prompts": prompts, "repeats": args.repeats}, f)
        spec = f.name
    try:
        bare = json.loads(subprocess.run([sys.executable, "-c", BARE_LOOP, spec], check=True,
                                         capture_output=True, text=True).stdout.strip().splitlines()[-1])
    finally:
        os.unlink(spec)

    batches = [prompts[i : i + args.batch_size] for i in range(0, len(prompts), args.batch_size)]
    sequential = time_backend(gguf, args.threads, 1, batches, args.max_new_tokens, args.repeats)
    batched = time_backend(gguf, args.threads, args.batch_size, batches, args.max_new_tokens, args.repeats)

    n = len(prompts)
    rate = lambda seconds: round(n / seconds, 2)  # noqa: E731
    ratio = lambda slow, fast: round(slow / fast, 3)  # noqa: E731
    seq_rows, bat_rows = np.stack(sequential["rows"]), np.stack(batched["rows"])
    result = {
        "gguf": str(gguf),
        "prompts": n,
        "threads": args.threads,
        "batch_size": args.batch_size,
        "cpu": cpu_record(),
        "load_average_1m": {"before": round(load_before[0], 2), "after": round(os.getloadavg()[0], 2)},
        "rows_per_s": {
            "labels": {
                "bare_loop_no_cache": rate(bare["bare_naive"]),
                "bare_loop_prefix_cache": rate(bare["bare_prefix_cache"]),
                "tunegguf_sequential": rate(sequential["labels_s"]),
                "tunegguf_batched": rate(batched["labels_s"]),
            },
            f"generate_{args.max_new_tokens}_tokens": {
                "tunegguf_sequential": rate(sequential["generate_s"]),
                "tunegguf_batched": rate(batched["generate_s"]),
            },
        },
        "ratios": {
            "labels_batched_vs_bare_no_cache": ratio(bare["bare_naive"], batched["labels_s"]),
            "labels_batched_vs_bare_prefix_cache": ratio(bare["bare_prefix_cache"], batched["labels_s"]),
            "labels_sequential_vs_bare_prefix_cache": ratio(bare["bare_prefix_cache"], sequential["labels_s"]),
            "generate_batched_vs_sequential": ratio(sequential["generate_s"], batched["generate_s"]),
        },
        "goals": {
            "labels_vs_naive_3x": ratio(bare["bare_naive"], batched["labels_s"]) >= 3,
            "labels_vs_prefix_1.6x": ratio(bare["bare_prefix_cache"], batched["labels_s"]) >= 1.6,
            "generate_vs_sequential_2x": ratio(sequential["generate_s"], batched["generate_s"]) >= 2,
        },
        "batched_vs_sequential": {
            "label_argmax_equal": int((seq_rows.argmax(1) == bat_rows.argmax(1)).sum()),
            "max_abs_logprob_delta": float(np.abs(seq_rows.astype(np.float64) - bat_rows).max()),
            "generations_equal": sum(a == b for a, b in zip(sequential["generated"], batched["generated"])),
        },
        "max_new_tokens": args.max_new_tokens,
        "sample_generations": batched["generated"][:4],
    }
    if args.hf:
        # The Transformers side (Helper B's benchmark) joins the same JSON, on the same prompts.
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from hf_scoring import measure

        result["hf"] = measure(n, args.batch_size)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
