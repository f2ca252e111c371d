"""Does batching change llama.cpp's answers? The SST-2 dev split scored one prompt per decode
(n_seq_max=1) and batched (n_seq_max=--batch-size, one unified KV cache), per GGUF of a run.

    .venv/bin/python benchmarks/batched_parity.py [--run runs/demo] [--data DIR] [--limit N]

The 872 dev rows (validation.tsv, read in place) are rendered with the run's prompt and
labels, exactly as the evaluator renders them, and scored on each of the run's GGUF files
by both paths, one after the other (each in its own worker process, so they never compete
for the cores). Reported per file: predictions equal (count), max and p99 |Δ| of the label
log-probs and of the full-vocabulary log-probs, rows/s of each path. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "sst2"


def read_dev(data_dir: Path, limit: int | None) -> list[str]:
    path = data_dir / "validation.tsv"
    if not path.is_file():
        sys.exit(f"batched_parity: {path} not found; pass --data DIR with SST-2's validation.tsv (872 rows)")
    with path.open(newline="", encoding="utf-8") as f:
        rows = [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return rows[:limit] if limit else rows


def score(gguf: Path, prompts: list[str], words: list[str], n_seq_max: int, batch_size: int,
          n_threads: int | None, n_ctx: int):
    """(log-prob rows, seconds, backend info, the label words' token ids)."""
    import numpy as np

    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend
    from tunegguf.prompts import label_token_ids

    with LlamaCppBackend(gguf, n_ctx=n_ctx, n_threads=n_threads, n_seq_max=n_seq_max) as backend:
        ids = label_token_ids(lambda t: backend.tokenize([t])[0], prompts[0], words)
        backend.next_token_logprobs(prompts[:2])  # warm-up: the first decode allocates buffers
        start = time.perf_counter()
        rows = np.concatenate([backend.next_token_logprobs(prompts[i : i + batch_size])
                               for i in range(0, len(prompts), batch_size)])
        seconds = time.perf_counter() - start
        info = backend.info
    return rows, seconds, info, ids


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", type=Path, default=Path("runs/demo"), help="a finished tunegguf run directory")
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="directory holding SST-2's validation.tsv")
    parser.add_argument("--limit", type=int, default=None, help="score only the first N rows (a quick check)")
    parser.add_argument("--models", nargs="*", default=None, help="quant names to score (default: every GGUF)")
    parser.add_argument("--batch-size", type=int, default=16, help="prompts per request and the batched n_seq_max")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()

    import numpy as np

    from tunegguf.data.example import Example
    from tunegguf.pipeline.predict import predictor_from_run
    from tunegguf.pipeline.stagebook import read_stages
    from tunegguf.prompts import PromptRenderer, TemplateTokens

    if not (args.run / "config.yaml").is_file():
        sys.exit(f"batched_parity: {args.run} is not a tunegguf run directory; pass --run DIR")
    predictor = predictor_from_run(args.run)
    files = {name: Path(p) for name, p in ((read_stages(args.run).get("export") or {}).get("files") or {}).items()}
    files = {name: p for name, p in files.items() if p.is_file() and (args.models is None or name in args.models)}
    if not files:
        sys.exit(f"batched_parity: {args.run} has no exported GGUF file{' of ' + str(args.models) if args.models else ''}")
    texts = read_dev(args.data, args.limit)
    load_before = os.getloadavg()[0]

    out: dict = {"run": str(args.run), "rows": len(texts), "labels": predictor.labels, "batch_size": args.batch_size,
                 "files": {}}
    for name, gguf in files.items():
        renderer = PromptRenderer(predictor.prompt, TemplateTokens.from_gguf(gguf), predictor.labels)
        prompts = [renderer.render(Example(id=str(i), text=t)).prompt for i, t in enumerate(texts)]
        words = list(renderer.words)
        single, single_s, _, ids = score(gguf, prompts, words, 1, args.batch_size, args.threads, predictor.n_ctx)
        batched, batched_s, info, _ = score(gguf, prompts, words, args.batch_size, args.batch_size, args.threads,
                                            predictor.n_ctx)
        full = np.abs(batched.astype(np.float64) - single)
        label = full[:, ids]
        pred_single, pred_batched = single[:, ids].argmax(1), batched[:, ids].argmax(1)
        out["files"][name] = {
            "file": str(gguf),
            "n_seq_max": info["n_seq_max"],
            "predictions_equal": int((pred_single == pred_batched).sum()),
            "predictions_differ": int((pred_single != pred_batched).sum()),
            "label_logprob_delta": {"max": float(label.max()), "p99": float(np.percentile(label, 99))},
            "full_vocab_logprob_delta": {"max": float(full.max()), "p99": float(np.percentile(full, 99))},
            "rows_per_s": {"one_at_a_time": round(len(texts) / single_s, 2),
                           "batched": round(len(texts) / batched_s, 2)},
            "speedup": round(single_s / batched_s, 3),
            # Where they differ: the label log-probs of both paths (near-ties or not).
            "differing_rows": [
                {"row": int(i), "one_at_a_time": [round(float(v), 4) for v in single[i, ids]],
                 "batched": [round(float(v), 4) for v in batched[i, ids]]}
                for i in np.flatnonzero(pred_single != pred_batched)[:20]
            ],
        }
        print(f"{name}: {out['files'][name]['predictions_equal']}/{len(texts)} equal", file=sys.stderr)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from evaluate_overhead import cpu_record

    out["cpu"] = cpu_record()
    out["load_average_1m"] = {"before": round(load_before, 2), "after": round(os.getloadavg()[0], 2)}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
