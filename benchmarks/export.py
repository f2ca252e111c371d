"""Wall time and peak RSS of each export step: merge, convert, metadata fix, each quantization.

    .venv/bin/python benchmarks/export.py                        # smollm2-135m + a random LoRA
    .venv/bin/python benchmarks/export.py --quants Q8_0,Q4_K_M --keep /tmp/export-bench

Every step runs in a fresh child process (this script with --step), which reports its own
peak RSS and that of the processes it waited for (the converter and llama.cpp's quantizer
run as grandchildren), so one step's memory never hides in another's. The adapter is made
first (not timed): PEFT LoRA r=16, alpha=32, on all seven projections, random weights of
std 0.02. Prints JSON; on a shared CPU the numbers move with the other processes' load, so
the load averages are printed with them.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import TARGETS, peak_rss_mb  # noqa: E402


def make_adapter(base_dir: Path, target: Path, std: float = 0.02) -> None:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(str(base_dir)),
                           LoraConfig(r=16, lora_alpha=32, target_modules=TARGETS, init_lora_weights=False))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.normal_(0.0, std)
    model.save_pretrained(str(target))


def run_step(step: str, work: Path, base_dir: Path, quant: str | None) -> dict:
    """The child: one step, then its own numbers (imports inside each step, so a step's peak
    RSS holds only what that step loads; wall time starts after the imports)."""
    detail = {}
    if step == "merge":
        from tunegguf.export.merge import merge_adapter

        shutil.rmtree(work / "merged", ignore_errors=True)  # measure a real merge, not the up-to-date skip
        start = time.perf_counter()
        result = merge_adapter(base_dir, work / "adapter", work / "merged", progress=False)
        detail = {"merged_tensors": result.merged_tensors}
    elif step == "convert":
        from tunegguf.export.convert import convert_to_gguf

        start = time.perf_counter()
        convert_to_gguf(work / "merged", work / "model-f16.gguf", "f16")
    elif step == "fix_metadata":
        from transformers import AutoTokenizer

        from tunegguf.export.metadata import fix_tokenizer_metadata

        start = time.perf_counter()
        detail = {"fixes": fix_tokenizer_metadata(work / "model-f16.gguf", AutoTokenizer.from_pretrained(str(work / "merged")))}
    elif step == "quantize":
        from tunegguf.export.quantize import quantize_gguf

        start = time.perf_counter()
        quantize_gguf(work / "model-f16.gguf", work / f"model-{quant}.gguf", quant)
        detail = {"size_mb": round((work / f"model-{quant}.gguf").stat().st_size / 1e6, 1)}
    wall = time.perf_counter() - start
    # The converter / quantizer (waited-for children); includes this step's RSS at fork
    # time, which is small because each step imports only what it needs.
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return {"step": step if quant is None else f"quantize {quant}", "wall_s": round(wall, 2),
            "peak_rss_mb": peak_rss_mb(), "peak_rss_subprocess_mb": round(children / 1024, 1), **detail}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--quants", default="Q8_0,Q6_K,Q5_K_M,Q5_0,Q4_K_M,Q4_0,Q4_1")
    parser.add_argument("--keep", type=Path, default=None, help="work directory to keep (default: a temp dir)")
    parser.add_argument("--step", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--base", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--quant", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.step:
        print(json.dumps(run_step(args.step, args.work, args.base, args.quant)))
        return

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tunegguf.models import resolve_model

    base_dir = Path(resolve_model(args.model).path)
    work = args.keep or Path(tempfile.mkdtemp(prefix="tunegguf-export-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "adapter" / "adapter_config.json").is_file():
        make_adapter(base_dir, work / "adapter")
    steps: list[tuple[str, str | None]] = [("merge", None), ("convert", None), ("fix_metadata", None)]
    steps += [("quantize", q.strip().upper()) for q in args.quants.split(",") if q.strip()]
    results = []
    for step, quant in steps:
        cmd = [sys.executable, __file__, "--step", step, "--work", str(work), "--base", str(base_dir)]
        if quant:
            cmd += ["--quant", quant]
        out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, HF_HUB_OFFLINE="1"))
        if out.returncode != 0:
            raise SystemExit(f"step {step} {quant or ''} failed: {out.stderr.strip().splitlines()[-1]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), file=sys.stderr)
    print(json.dumps({
        "benchmark": "export", "model": args.model, "adapter": "LoRA r16 alpha32, 7 projections, random std 0.02",
        "cpu_count": os.cpu_count(), "load_average": [round(x, 2) for x in os.getloadavg()],
        "work_dir": str(work), "steps": results,
    }, indent=2))


if __name__ == "__main__":
    main()
