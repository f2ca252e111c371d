"""How much faster is the Transformers scorer than the one it replaced, on the same prompts?

    .venv/bin/python benchmarks/hf_scoring.py [--n 96] [--batch-size 16] [--repeats 3] [--threads N]

SmolLM2-135M (fp32, CPU), the rendered demo prompts of benchmarks/evaluate_overhead.py:
  * label scoring: the scorer as it was before issue 18 (copied below: left-padded batches in
    input order, the whole prompt through the model) vs `last_position_logprobs` (shared
    prefix's KV once, length-sorted suffix batches, only the last positions through the head);
  * teacher forcing: the old one-pair-per-forward loop (copied below) vs `position_logprobs`
    over the same pairs (prompt + a 12-16 token answer).
The two run interleaved, repeat by repeat, and the fastest of each is kept: the 2 shared
cores make single timings noisy, and interleaving spreads the noise over both. Also the
largest |Δ log-prob| between the two (full vocabulary and the two label tokens) and whether
every argmax agrees. Prints one JSON object. `measure(n, batch_size)` is what
evaluate_overhead.py calls to add this comparison to its own JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


# --- the baselines: the scorers as they were at commit 941bf2f ---------------------------

def baseline_last_position_logprobs(
    model: Any, tokenizer: Any, prompts: Sequence[str], batch_size: int = 16, keep_ids: Sequence[int] | None = None
) -> np.ndarray:
    """Today's label scorer: the library keeps it as its plain fallback path (each batch
    left-padded in input order, the whole prompt run, logits_to_keep=1)."""
    from tunegguf.scoring.logprobs import left_padded_logprobs

    return left_padded_logprobs(model, tokenizer, prompts, batch_size, keep_ids)


def baseline_teacher_forced(model: Any, prompt_ids: Sequence[list[int]], answer_ids: Sequence[list[int]]) -> np.ndarray:
    """HFBackend._teacher_forced_one's loop: one forward per pair."""
    import torch

    device = next(model.parameters()).device
    blocks = []
    with torch.inference_mode():
        for prompt, answer in zip(prompt_ids, answer_ids, strict=True):
            fed = torch.tensor([prompt + answer[:-1]], dtype=torch.long, device=device)
            logits = model(input_ids=fed, logits_to_keep=len(answer)).logits[0, -len(answer):, :]
            blocks.append(torch.log_softmax(logits.float(), dim=-1).cpu().numpy())
    return np.concatenate(blocks)


# --- the measurement ---------------------------------------------------------------------

def cpu_info() -> dict:
    """lscpu's model name and the flags that decide which kernels torch can use."""
    model, flags = platform.processor() or "unknown", []
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model in ("", "unknown", "x86_64"):
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = line.split(":", 1)[1].split()
                break
    except OSError:
        pass
    wanted = sorted(f for f in flags if f in ("avx2", "fma", "f16c") or f.startswith(("avx512", "amx")))
    return {"model_name": model, "flags": wanted, "cores": os.cpu_count()}


def answers_for(n: int) -> list[str]:
    reasons = ["the acting is strong and the plot holds together", "it broke down on the second day of use",
               "the price is too high for what it does", "every scene drags on for far too long"]
    return [f"{'positive' if i % 2 else 'negative'}: {reasons[i % len(reasons)]}.<|im_end|>" for i in range(n)]


def measure(n: int = 96, batch_size: int = 16, repeats: int = 3, threads: int | None = None,
            model_dir: str | Path | None = None, tf_pairs: int | None = None) -> dict:
    """Old vs new Transformers scorer on `n` demo prompts (and `tf_pairs`, default n // 4,
    teacher-forced pairs), side by side in this process. Returns the JSON-ready dict."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from evaluate_overhead import demo_prompts

    from tunegguf.models import resolve_model
    from tunegguf.scoring.logprobs import (
        ScoringPlan,
        common_prefix_length,
        encode_prompts,
        last_position_logprobs,
        pad_id_of,
        position_logprobs,
    )

    if threads:
        torch.set_num_threads(threads)
    model_dir = Path(model_dir) if model_dir else Path(resolve_model("smollm2-135m").path)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    prompts = demo_prompts(model_dir, n)
    ids = encode_prompts(tokenizer, prompts)
    label_ids = [tokenizer.convert_tokens_to_ids(w) for w in ("negative", "positive")]

    tf_n = tf_pairs if tf_pairs is not None else max(2, n // 4)
    prompt_ids = ids[:tf_n]
    answer_ids = [tokenizer(a, add_special_tokens=False)["input_ids"] for a in answers_for(tf_n)]
    fed = [p + a[:-1] for p, a in zip(prompt_ids, answer_ids)]
    positions = [range(len(p) - 1, len(p) - 1 + len(a)) for p, a in zip(prompt_ids, answer_ids)]

    def run_pair(old_fn, new_fn) -> tuple[float, float, Any, Any]:
        best_old = best_new = float("inf")
        old = new = None
        for _ in range(repeats):
            t0 = time.perf_counter()
            old = old_fn()
            t1 = time.perf_counter()
            new = new_fn()
            t2 = time.perf_counter()
            best_old, best_new = min(best_old, t1 - t0), min(best_new, t2 - t1)
        return best_old, best_new, old, new

    load_before = os.getloadavg()
    lab_old_s, lab_new_s, lab_old, lab_new = run_pair(
        lambda: baseline_last_position_logprobs(model, tokenizer, prompts, batch_size),
        lambda: last_position_logprobs(model, tokenizer, prompts, batch_size),
    )
    tf_old_s, tf_new_s, tf_old, tf_new = run_pair(
        lambda: baseline_teacher_forced(model, prompt_ids, answer_ids),
        lambda: position_logprobs(model, fed, positions, batch_size, pad_id_of(tokenizer)),
    )
    tf_tokens = sum(len(a) for a in answer_ids)
    label_delta = np.abs(lab_old[:, label_ids] - lab_new[:, label_ids])
    plan = ScoringPlan.of(model)
    return {
        "model": str(model_dir),
        "dtype": "float32",
        "torch_threads": torch.get_num_threads(),
        "plan": {"fast": plan.fast, "prefix_cache": plan.prefix, "head_gather": plan.body is not None},
        "batch_size": batch_size,
        "repeats": repeats,
        "labels": {
            "prompts": n,
            "prompt_tokens_min_max": [min(map(len, ids)), max(map(len, ids))],
            "shared_prefix_tokens": common_prefix_length(ids),
            "old_rows_per_s": round(n / lab_old_s, 2),
            "new_rows_per_s": round(n / lab_new_s, 2),
            "ratio": round(lab_old_s / lab_new_s, 3),
            "goal_ratio": 1.5,
            "argmax_equal": int((lab_old.argmax(1) == lab_new.argmax(1)).sum()),
            "label_argmax_equal": int((lab_old[:, label_ids].argmax(1) == lab_new[:, label_ids].argmax(1)).sum()),
            "max_abs_delta_full_vocab": float(np.abs(lab_old - lab_new).max()),
            "max_abs_delta_labels": float(label_delta.max()),
        },
        "teacher_forced": {
            "pairs": tf_n,
            "answer_tokens": tf_tokens,
            "old_tokens_per_s": round(tf_tokens / tf_old_s, 2),
            "new_tokens_per_s": round(tf_tokens / tf_new_s, 2),
            "ratio": round(tf_old_s / tf_new_s, 3),
            "argmax_equal": int((tf_old.argmax(1) == tf_new.argmax(1)).sum()),
            "max_abs_delta_full_vocab": float(np.abs(tf_old - tf_new).max()),
        },
        "load_average_before_after": [round(x, 2) for x in (*load_before[:1], os.getloadavg()[0])],
        "cpu": cpu_info(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=96, help="label-scoring prompts (96 or more for the figure)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--tf-pairs", type=int, default=None, help="teacher-forced pairs (default: n // 4)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(ROOT))
    print(json.dumps(measure(args.n, args.batch_size, args.repeats, args.threads, tf_pairs=args.tf_pairs), indent=2))


if __name__ == "__main__":
    main()
