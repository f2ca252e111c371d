"""Importance-matrix quantization: its cost and how much it lowers the error that matters.

    .venv/bin/python benchmarks/imatrix.py --run runs/demo
    .venv/bin/python benchmarks/imatrix.py --run runs/sst2-smollm2 --quants Q5_0,Q4_K_M,Q4_0,Q3_K_M

Needs a finished run directory (merged checkpoint, f16 GGUF, frozen splits). The matrix is
collected from training rows, as the export stage does; the error is then scored with a
second matrix collected from the *validation* rows, so the reduction is measured on
activations the quantizer never saw. For each quant type the f16 GGUF is quantized without
and with the matrix (timed), and both files are compared with the f16 weights:

    weighted relative squared error = Σ_ij a_j (W_ij − Ŵ_ij)² / Σ_ij a_j W_ij²   (a_j: mean x_j² on validation rows)

(`tunegguf.export.imatrix.quantization_error`): the output error of each matmul on typical
inputs, to first order; the plain relative squared error (a_j = 1) is printed beside it. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import peak_rss_mb  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", type=Path, default=REPO / "runs" / "demo", help="a finished run directory")
    parser.add_argument("--quants", default="Q5_0,Q4_K_M,Q4_0,Q3_K_M")
    parser.add_argument("--rows", type=int, default=256, help="rows per matrix (training and validation)")
    args = parser.parse_args()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoTokenizer

    from tunegguf.config.run import load_run_config
    from tunegguf.data.prepare import load_split
    from tunegguf.export.imatrix import collect_importance, load_for_collection, quantization_error, write_imatrix
    from tunegguf.export.quantize import quantize_gguf
    from tunegguf.export.stage import calibration_texts
    from tunegguf.io import read_json

    merged = args.run / "export" / "merged"
    f16 = args.run / "export" / "gguf" / "model-f16.gguf"
    if not merged.is_dir() or not f16.is_file():
        sys.exit(f"error: {args.run} has no export/merged and export/gguf/model-f16.gguf; run `tunegguf run` first")
    config = load_run_config(args.run / "config.yaml", [])
    labels = read_json(args.run / "data" / "data_manifest.json").get("labels")
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    train = calibration_texts(tokenizer, config.prompt, labels, load_split(args.run / "data" / "train.jsonl"), args.rows)
    held_out = calibration_texts(tokenizer, config.prompt, labels,
                                 load_split(args.run / "data" / "validation.jsonl"), args.rows)

    model, tokenizer = load_for_collection(merged)
    started = time.perf_counter()
    matrix = collect_importance(model, tokenizer, train, gguf_path=f16, progress=False)
    collect_seconds = time.perf_counter() - started
    scoring = collect_importance(model, tokenizer, held_out, gguf_path=f16, progress=False).means()
    del model

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        imatrix = write_imatrix(Path(tmp) / "imatrix.gguf", matrix)
        for quant in [q.strip() for q in args.quants.split(",") if q.strip()]:
            row = {"quant": quant}
            for label, kwargs in (("plain", {}), ("imatrix", {"imatrix": imatrix})):
                out = Path(tmp) / f"{quant}-{label}.gguf"
                started = time.perf_counter()
                quantize_gguf(f16, out, quant, threads=1, **kwargs)
                row[label] = {"quantize_s": round(time.perf_counter() - started, 2), "size_mb": round(out.stat().st_size / 1e6, 1),
                              **{k: round(v, 6) for k, v in quantization_error(out, f16, scoring).items()}}
                out.unlink()
            row["weighted_error_ratio"] = round(row["imatrix"]["weighted_rel_sq_error"] / row["plain"]["weighted_rel_sq_error"], 3)
            results.append(row)
    print(json.dumps({
        "run": str(args.run), "model": config.model.name, "train_rows": len(train), "validation_rows": len(held_out),
        "tokens": matrix.tokens, "weights_with_a_matrix": len(matrix.sums),
        "collect_s": round(collect_seconds, 1), "torch_threads": int(os.environ.get("OMP_NUM_THREADS", "0")) or None,
        "peak_rss_mb": peak_rss_mb(), "quants": results,
    }, indent=2))


if __name__ == "__main__":
    main()
