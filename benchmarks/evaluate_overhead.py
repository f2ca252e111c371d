"""What does tunegguf's llama.cpp backend cost over a bare llama-cpp-python loop?

    .venv/bin/python benchmarks/evaluate_overhead.py [--gguf FILE] [--n 48] [--threads N]

The same rendered SmolLM2 prompts go through
  * a bare loop in a fresh process: per prompt reset + eval + read the last logits +
    log-softmax (no cache), and the same loop keeping the shared prefix in the KV cache;
  * tunegguf's LlamaCppBackend (worker process, pipe, batches): label scoring
    (`next_token_logprobs`) and greedy generation (`generate`).
Model loading is excluded everywhere. Each measurement is repeated and the fastest kept,
because the 2 shared cores make single timings noisy. Prints one JSON object.
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
    p.use_extra_bufts = False  # same setting as tunegguf's worker (AMX crash, see NOTES)
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--gguf", type=Path, default=None, help="GGUF to time (default: SmolLM2-135M f16)")
    parser.add_argument("--n", type=int, default=48, help="number of prompts")
    parser.add_argument("--threads", type=int, default=None, help="llama.cpp threads (default: the backend's)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend, default_threads
    from tunegguf.models import resolve_model

    args.threads = args.threads or default_threads()
    model_dir = Path(resolve_model("smollm2-135m").path)
    gguf = args.gguf or default_gguf(model_dir)
    prompts = demo_prompts(model_dir, args.n)

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
    with LlamaCppBackend(gguf, n_threads=args.threads) as backend:
        backend.next_token_logprobs(prompts[:1])  # warm up (first decode allocates buffers)
        labels = timed_best(lambda: [backend.next_token_logprobs(b) for b in batches], args.repeats)
        generate = timed_best(lambda: [backend.generate(b, args.max_new_tokens) for b in batches], args.repeats)
        generated = backend.generate(prompts[:4], args.max_new_tokens)

    n = len(prompts)
    rate = lambda seconds: round(n / seconds, 2)  # noqa: E731
    result = {
        "gguf": str(gguf),
        "prompts": n,
        "threads": args.threads,
        "cpu_count": os.cpu_count(),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "examples_per_s": {
            "bare_loop_no_cache": rate(bare["bare_naive"]),
            "bare_loop_prefix_cache": rate(bare["bare_prefix_cache"]),
            "tunegguf_labels": rate(labels),
            "tunegguf_generate": rate(generate),
        },
        "ratios": {
            "tunegguf_labels_vs_bare_prefix_cache": round(bare["bare_prefix_cache"] / labels, 3),
            "tunegguf_labels_vs_bare_no_cache": round(bare["bare_naive"] / labels, 3),
            "labels_vs_generate_speed": round(generate / labels, 2),
        },
        "max_new_tokens": args.max_new_tokens,
        "sample_generations": generated,
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
