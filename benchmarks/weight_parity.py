"""Time and peak RSS of the weight-space parity (issue 11) over a quant ladder, with results.

    .venv/bin/python benchmarks/weight_parity.py --sst2-steps 40     # a short real SST-2 LoRA first
    .venv/bin/python benchmarks/weight_parity.py --adapter runs/demo/adapter
    .venv/bin/python benchmarks/weight_parity.py                     # a random LoRA (std 0.02)

The adapter is merged into smollm2-135m, converted to f16 and quantized to each type of the
ladder (not timed); then `weight_parity` runs once per file in a fresh child process that
reports its wall time and peak RSS with the share of the fine-tune delta kept. The SST-2
LoRA follows NOTES.md: r16, alpha 32, seven projections, AdamW lr 1e-3, batch 16, the
system message "Classify sentiment.", loss on the answer tokens only. The base is
dequantized from Q4_1, so the Q4_1 file is expected to erase most of the delta.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TARGETS, peak_rss_mb  # noqa: E402
SST2 = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"


def train_sst2_adapter(base_dir: Path, target: Path, steps: int, batch: int = 16, lr: float = 1e-3) -> dict:
    """A short LoRA fine-tune on SST-2 (plain torch loop); returns the first and last losses."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunegguf.data.example import Example
    from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens

    tokenizer = AutoTokenizer.from_pretrained(str(base_dir))
    prompt = PromptConfig(system_prompt="Classify sentiment.",
                          instruction="Is the sentiment of this movie review positive or negative?",
                          input_prefix="Review: ")
    renderer = PromptRenderer(prompt, TemplateTokens.from_hf_tokenizer(tokenizer), ["negative", "positive"])
    with SST2.open(encoding="utf-8") as f:
        rows = [(r["sentence"], "positive" if r["label"] == "1" else "negative") for r in csv.DictReader(f, delimiter="\t")]
    random.Random(0).shuffle(rows)
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)),
                           LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS))
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for step in range(steps):
        encoded = []
        for i, (text, label) in enumerate(rows[step * batch:(step + 1) * batch]):
            rendered = renderer.render(Example(id=str(i), text=text, label=label))
            encoded.append((tokenizer(rendered.prompt, add_special_tokens=False)["input_ids"],
                            tokenizer(rendered.target, add_special_tokens=False)["input_ids"]))
        k = len(encoded[0][1])  # "negative"/"positive" + <|im_end|>: two tokens each
        width = max(len(p) + len(a) for p, a in encoded)
        ids = torch.full((len(encoded), width), tokenizer.pad_token_id)
        mask = torch.zeros_like(ids)
        for row, (p, a) in enumerate(encoded):
            ids[row, width - len(p) - len(a):] = torch.tensor(p + a)
            mask[row, width - len(p) - len(a):] = 1
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = model(input_ids=ids, attention_mask=mask, position_ids=positions, logits_to_keep=k + 1).logits[:, :-1]
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), ids[:, -k:].reshape(-1))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(round(float(loss), 4))
        print(f"sst2 step {step + 1}/{steps} loss {losses[-1]}", file=sys.stderr, flush=True)
    model.save_pretrained(str(target))
    return {"steps": steps, "batch": batch, "lr": lr, "first_loss": losses[0], "last_loss": losses[-1],
            "mean_last_10_loss": round(sum(losses[-10:]) / len(losses[-10:]), 4)}


def measure(gguf: Path, base_dir: Path, merged_dir: Path) -> dict:
    """The child: one weight parity, its wall time and peak RSS."""
    from tunegguf.export.weight_parity import weight_parity

    start = time.perf_counter()
    parity = weight_parity(gguf, base_dir=base_dir, merged_dir=merged_dir)
    wall = time.perf_counter() - start
    return {
        "file": gguf.name, "wall_s": round(wall, 2),
        "peak_rss_mb": peak_rss_mb(),
        "kept": round(parity.kept, 4), "rel_error": round(parity.rel_error, 5),
        "delta_snr": round(parity.delta_snr, 3), "verdict": parity.verdict,
        "tensor_types": parity.tensor_types, "not_checked": len(parity.not_checked),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--adapter", type=Path, default=None, help="a trained LoRA adapter directory")
    parser.add_argument("--sst2-steps", type=int, default=0, help="train a LoRA on SST-2 for this many steps first")
    parser.add_argument("--quants", default="Q8_0,Q6_K,Q5_K_M,Q5_0,Q4_K_M,Q4_0,Q4_1")
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temp dir)")
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--merged", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child, args.base, args.merged)))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tunegguf.export.convert import convert_to_gguf
    from tunegguf.export.merge import merge_adapter
    from tunegguf.export.quantize import quantize_gguf
    from tunegguf.models import resolve_model

    base_dir = Path(resolve_model(args.model).path)
    work = args.keep or Path(tempfile.mkdtemp(prefix="tunegguf-parity-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    training = None
    adapter = args.adapter
    if adapter is None:
        adapter = work / "adapter"
        record = adapter / "tunegguf_training.json"
        if args.sst2_steps and record.is_file() and json.loads(record.read_text()).get("steps") == args.sst2_steps:
            training = json.loads(record.read_text())  # --keep: the same fine-tune, not trained again
        elif args.sst2_steps:
            training = train_sst2_adapter(base_dir, adapter, args.sst2_steps)
            record.write_text(json.dumps(training))
        else:
            sys.path.insert(0, str(REPO / "benchmarks"))
            from export import make_adapter

            make_adapter(base_dir, adapter)
    merged = merge_adapter(base_dir, adapter, work / "merged", progress=False).merged_dir
    f16 = convert_to_gguf(merged, work / "model-f16.gguf", "f16")
    results = []
    for quant in [q.strip().upper() for q in args.quants.split(",") if q.strip()]:
        path = quantize_gguf(f16, work / f"model-{quant}.gguf", quant)
        out = subprocess.run([sys.executable, __file__, "--child", str(path), "--base", str(base_dir), "--merged", str(merged)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(f"weight parity of {path.name} failed: {out.stderr.strip().splitlines()[-1]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({
        "benchmark": "weight_parity", "model": args.model,
        "adapter": str(args.adapter) if args.adapter else ("sst2 LoRA" if training else "random LoRA std 0.02"),
        "training": training, "cpu_count": os.cpu_count(),
        "load_average": [round(x, 2) for x in os.getloadavg()], "work_dir": str(work), "files": results,
    }, indent=2))


if __name__ == "__main__":
    main()
