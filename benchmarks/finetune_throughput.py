"""Unsloth vs plain Transformers + PEFT + TRL: the same LoRA fine-tune, timed in one run.

    .venv/bin/python benchmarks/finetune_throughput.py                  # smollm2-135m, 10 steps
    .venv/bin/python benchmarks/finetune_throughput.py --steps 20 --batch-size 16

Each engine trains in its own subprocess (Unsloth patches transformers / trl / peft on
import, so a shared process would measure the patched stack twice) through the stage's own
`tunegguf.finetune.run`, on the same synthetic reviews, settings and seed. Prints JSON:
tokens/s and seconds per step (the first step, a warm-up, left out), peak memory (RSS on
the CPU, max allocated on CUDA) and the Unsloth / PEFT ratios. On a shared CPU the numbers
move with the other processes' load; the load averages are printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GOOD = ["wonderful", "moving", "sharp", "funny", "warm", "gorgeous", "clever", "tender", "gripping", "bold"]
BAD = ["dull", "clumsy", "tedious", "cold", "noisy", "lifeless", "silly", "bland", "messy", "hollow"]
FILLER = ["the", "film", "story", "acting", "plot", "cast", "ending", "score", "script", "scenes", "and", "with",
          "a", "very", "rather", "often", "in", "its", "second", "half", "director", "camera", "dialogue"]


def reviews(n: int, words: int, seed: int = 0):
    """Deterministic synthetic reviews, half positive, about `words` words each."""
    from tunegguf.data.example import Example

    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        cue = GOOD if label == "positive" else BAD
        text = " ".join(rng.choice(cue) if rng.random() < 0.2 else rng.choice(FILLER) for _ in range(words))
        rows.append(Example(id=f"b{i}", text=text, label=label))
    return rows


def peak_memory_bytes() -> tuple[int, str]:
    import torch

    if torch.cuda.is_available():
        return int(torch.cuda.max_memory_allocated()), "cuda_max_allocated"
    import resource

    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024, "cpu_peak_rss"


def worker(args: argparse.Namespace) -> dict:
    """One engine, one process: train through the stage and read its per-step history."""
    from tunegguf.finetune import FinetuneConfig, run
    from tunegguf.io import read_jsonl
    from tunegguf.models import ModelConfig
    from tunegguf.prompts import PromptConfig

    config = FinetuneConfig(
        engine=args.engine, max_steps=args.steps, batch_size=args.batch_size, learning_rate=5e-4,
        warmup_steps=0, lora_r=16, lora_alpha=32, seed=3407, save_every=0, baseline=False,
        gradient_checkpointing=args.gradient_checkpointing,
    )
    with tempfile.TemporaryDirectory(prefix="tunegguf-bench-") as tmp:
        started = time.perf_counter()
        result = run(config, model=ModelConfig(name=args.model, max_seq_length=512),
                     prompt=PromptConfig(system_prompt="Classify sentiment."),
                     train=reviews(args.steps * args.batch_size, args.words), validation=[],
                     labels=["negative", "positive"], out_dir=Path(tmp) / "ft")
        wall = time.perf_counter() - started
        steps = [r for r in read_jsonl(result.history_path) if r["kind"] == "train"]
    timed = steps[1:] if len(steps) > 1 else steps  # step 1 pays for one-off warm-up
    seconds = sum(r["step_seconds"] for r in timed)
    tokens = steps[-1]["tokens_seen"] - (steps[0]["tokens_seen"] if len(steps) > 1 else 0)
    memory, memory_kind = peak_memory_bytes()
    import torch

    return {
        "engine": result.engine,
        "steps": result.steps,
        "tokens_per_second": round(tokens / seconds, 1) if seconds else None,
        "seconds_per_step_median": round(statistics.median(r["step_seconds"] for r in timed), 4),
        "seconds_per_step_mean": round(seconds / len(timed), 4),
        "first_step_seconds": round(steps[0]["step_seconds"], 4),
        "peak_memory_mb": round(memory / 2**20, 1),
        "peak_memory_kind": memory_kind,
        "loss_first_last": [round(steps[0]["loss"], 5), round(steps[-1]["loss"], 5)],
        "train_loop_seconds": result.train_seconds,
        "process_wall_seconds": round(wall, 2),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch_threads": torch.get_num_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--words", type=int, default=40, help="words per synthetic review")
    parser.add_argument("--gradient-checkpointing", default="unsloth", choices=["unsloth", "true", "false"])
    parser.add_argument("--engines", default="unsloth,peft")
    parser.add_argument("--engine", help=argparse.SUPPRESS)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args)), flush=True)
        return

    results, load = {}, {"before": os.getloadavg()}
    for engine in args.engines.split(","):
        cmd = [sys.executable, __file__, "--worker", "--engine", engine, "--model", args.model, "--steps",
               str(args.steps), "--batch-size", str(args.batch_size), "--words", str(args.words),
               "--gradient-checkpointing", args.gradient_checkpointing]
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
        lines = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
        if proc.returncode != 0 or not lines:
            sys.exit(f"{engine} run failed:\n{(proc.stdout + proc.stderr)[-3000:]}")
        results[engine] = json.loads(lines[-1][len("RESULT "):])
    load["after"] = os.getloadavg()
    report = {
        "model": args.model, "steps": args.steps, "batch_size": args.batch_size, "words_per_review": args.words,
        "gradient_checkpointing": args.gradient_checkpointing, "cpu_count": os.cpu_count(),
        "load_average_1_5_15": load, "results": results,
    }
    if "unsloth" in results and "peft" in results:
        u, p = results["unsloth"], results["peft"]
        report["unsloth_over_peft"] = {
            "tokens_per_second": round(u["tokens_per_second"] / p["tokens_per_second"], 3),
            "seconds_per_step": round(u["seconds_per_step_median"] / p["seconds_per_step_median"], 3),
            "peak_memory": round(u["peak_memory_mb"] / p["peak_memory_mb"], 3),
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
