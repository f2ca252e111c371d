"""SmolLM2-135M on SST-2: the quality bar (>= 85% dev accuracy, CPU fine-tune under 20 min).

    .venv/bin/python benchmarks/sst2_quality.py                          # the full run (~15-20 min, 2 cores)
    .venv/bin/python benchmarks/sst2_quality.py --max-steps 2 --limit 32  # smoke test

Reads the SST-2 TSVs directly (label 0/1, sentence). Training rows come from train.tsv in a
seeded order; a slice of train that is never trained on picks the best checkpoint, and the
872-row validation split (the reported one) is scored once, at the end, by label
probabilities. Settings from NOTES.md: ChatML through the model's template, short system
prompt, r16/alpha32 on all projections, lr 1e-3 cosine, batch 16. Prints JSON.
"""

from __future__ import annotations

import argparse
import csv
import json
import random
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

LABELS = ["negative", "positive"]


def read_tsv(path: Path, prefix: str):
    from tunegguf.data.example import Example

    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    return [Example(id=f"{prefix}{i}", text=r["sentence"].strip(), label=LABELS[int(r["label"])])
            for i, r in enumerate(rows)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "sst2")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--max-steps", type=int, default=150)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--select-rows", type=int, default=256,
                        help="train rows held out to pick the best checkpoint (never the reported split)")
    parser.add_argument("--limit", type=int, default=None, help="score only N dev rows (and N selection rows)")
    parser.add_argument("--gradient-checkpointing", default="false", choices=["unsloth", "true", "false"],
                        help="off by default: activations of a 135M model fit easily and recomputing costs time")
    parser.add_argument("--engine", default="auto", choices=["auto", "unsloth", "peft"])
    parser.add_argument("--baseline", action="store_true", help="also score the base model zero-shot (slower)")
    parser.add_argument("--out-dir", type=Path, default=REPO / "runs" / "sst2-quality")
    args = parser.parse_args()

    from tunegguf.finetune import FinetuneConfig, run
    from tunegguf.finetune.scoring import make_evaluator
    from tunegguf.models import ModelConfig, resolve_model
    from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens

    train_all = read_tsv(args.data / "train.tsv", "train-")
    dev = read_tsv(args.data / "validation.tsv", "dev-")
    random.Random(0).shuffle(train_all)
    select_n = min(args.select_rows, args.limit or args.select_rows)
    selection = train_all[:select_n]
    train = train_all[args.select_rows : args.select_rows + args.max_steps * args.batch_size]
    dev = dev[: args.limit] if args.limit else dev

    prompt = PromptConfig(system_prompt="Classify sentiment.",
                          instruction="Is the sentiment of this movie review positive or negative?",
                          input_prefix="Review: ")
    model_cfg = ModelConfig(name=args.model, max_seq_length=256)
    config = FinetuneConfig(
        engine=args.engine, lora_r=16, lora_alpha=32, max_steps=args.max_steps, learning_rate=args.learning_rate,
        lr_scheduler="cosine", warmup_steps=min(5, args.max_steps // 10), batch_size=args.batch_size,
        eval_every=args.eval_every, save_every=args.eval_every, eval_batch_size=32, metric_for_best="accuracy",
        baseline=args.baseline, gradient_checkpointing=args.gradient_checkpointing,
    )
    started = time.perf_counter()
    result = run(config, model=model_cfg, prompt=prompt, train=train, validation=selection, labels=LABELS,
                 out_dir=args.out_dir, overwrite=True)
    finetune_seconds = time.perf_counter() - started

    # Imported after run(): Unsloth must patch transformers / peft before they are imported.
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # Score the reported split once, with the best adapter, as the parity report will.
    scored_at = time.perf_counter()
    base_path = resolve_model(args.model).path
    tokenizer = AutoTokenizer.from_pretrained(str(result.adapter_dir))
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32),
                                      str(result.adapter_dir))
    renderer = PromptRenderer(prompt, TemplateTokens.from_hf_tokenizer(tokenizer), LABELS)
    evaluator = make_evaluator(tokenizer, renderer, dev, LABELS, batch_size=32, max_seq_length=512,
                               collapse_threshold=0.9, need_loss=False)
    metrics = evaluator.evaluate(model)
    print(json.dumps({
        "model": args.model,
        "engine": result.engine,
        "steps": result.steps,
        "train_rows_used": result.steps * args.batch_size,
        "best_step": result.best_step,
        "selection_rows": len(selection),
        "selection_accuracy": (result.final_metrics or {}).get("accuracy"),
        "finetune_seconds": round(finetune_seconds, 1),
        "train_loop_seconds": result.train_seconds,
        "dev_rows": metrics["n"],
        "dev_scoring_seconds": round(time.perf_counter() - scored_at, 1),
        "accuracy": round(metrics["accuracy"], 4),
        "macro_f1": round(metrics["macro_f1"], 4),
        "per_class_recall": {k: round(v, 4) for k, v in metrics["per_class_recall"].items()},
        "prediction_distribution": {k: round(v, 4) for k, v in metrics["prediction_distribution"].items()},
        "baseline_selection_accuracy": (result.baseline or {}).get("accuracy"),
        "adapter_dir": str(result.adapter_dir),
        "torch_threads": torch.get_num_threads(),
    }, indent=2))


if __name__ == "__main__":
    main()
