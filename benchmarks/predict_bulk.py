"""`tunegguf predict` on a big input: rows/s and peak memory with --workers 1 and --workers 2.

    .venv/bin/python benchmarks/predict_bulk.py [--run runs/demo] [--model Q8_0] [--rows 20000]
        [--workers 1,2] [--input FILE --text-column COL] [--chunk-rows 512] [--batch-size 16]

The input: the first --rows rows of SST-2's train split (/work/shared/data/sst2/train.tsv,
read in place; generated reviews when it is absent, or --input FILE). Each --workers value
runs `write_predictions` (the code behind `tunegguf predict --input ... --output ...`) in a
fresh process writing a Parquet file, while this process samples the RSS of that process
and of its llama.cpp workers every 0.1 s (psutil). Reported per run: rows/s after the
model loaded (load_s apart) and over the whole run, the peak RSS of the parent, of the
largest worker and of all of them together, and whether the outputs of all runs are the
same. Prints one JSON object, with the CPU and the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SST2_TRAIN = REPO.parent / "shared" / "data" / "sst2" / "train.tsv"
if not SST2_TRAIN.is_file():
    SST2_TRAIN = Path("/work/shared/data/sst2/train.tsv")

CHILD = r'''
import json, sys, time
from pathlib import Path
spec = json.loads(sys.argv[1])
started = time.perf_counter()
from tunegguf.data.stream import RowStream
from tunegguf.pipeline.bulk import write_predictions
from tunegguf.pipeline.predict import predictor_from_run
predictor = predictor_from_run(Path(spec["run"]), spec["model"])
opened = {}
stream = RowStream(spec["input"], spec["text_column"], spec["chunk_rows"])
result = write_predictions(predictor, stream, Path(spec["output"]), workers=spec["workers"],
                           batch_size=spec["batch_size"], restart=True, text_column=spec["text_column"],
                           progress=False, on_open=lambda info: opened.setdefault("t", time.perf_counter()))
done = time.perf_counter()
status = {l.split(":")[0]: l.split()[1] for l in Path("/proc/self/status").read_text().splitlines()
          if l.startswith("VmHWM")}
print(json.dumps({"rows": result.rows, "seconds": done - started, "load_s": opened["t"] - started,
                  "score_s": done - opened["t"], "model": str(predictor.model),
                  "parent_vmhwm_mb": int(status["VmHWM"]) / 1024}))
'''


def cpu() -> dict:
    info = {"machine": platform.machine(), "cores": os.cpu_count()}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "Model name":
                info["model_name"] = value.strip()
            if key.strip() == "Flags":
                flags = value.split()
                info["flags"] = sorted(f for f in flags if f.startswith(("avx", "amx", "fma", "f16c")))
    except (OSError, subprocess.CalledProcessError):
        pass
    return info


def make_input(args, folder: Path) -> tuple[Path, str, str]:
    if args.input:
        return Path(args.input), args.text_column, str(args.input)
    path = folder / "input.tsv"
    if SST2_TRAIN.is_file():
        with SST2_TRAIN.open(encoding="utf-8") as src, path.open("w", encoding="utf-8") as out:
            for number, line in enumerate(src):
                if number > args.rows:
                    break
                out.write(line)
        return path, "sentence", f"{SST2_TRAIN} (first {args.rows} rows)"
    words = ["great", "awful", "boring", "moving", "dull", "wonderful", "terrible", "fine", "tender", "clumsy"]
    with path.open("w", encoding="utf-8") as out:
        out.write("id\ttext\n")
        for i in range(args.rows):
            out.write(f"{i}\tthe film was {words[i % 10]} , {words[(3 * i + 1) % 10]} and {words[(7 * i + 2) % 10]}\n")
    return path, "text", f"generated reviews ({args.rows} rows; {SST2_TRAIN} is absent)"


def measure(spec: dict) -> dict:
    import psutil

    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(spec)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    parent = psutil.Process(proc.pid)
    peak = {"parent": 0, "worker": 0, "total": 0}
    while proc.poll() is None:
        try:
            own = parent.memory_info().rss
            workers = [c.memory_info().rss for c in parent.children(recursive=True)]
        except psutil.Error:
            workers, own = [], 0
        peak["parent"] = max(peak["parent"], own)
        peak["worker"] = max([peak["worker"], *workers])
        peak["total"] = max(peak["total"], own + sum(workers))
        time.sleep(0.1)
    out, err = proc.communicate()
    if proc.returncode != 0:
        raise SystemExit(f"workers={spec['workers']} failed ({proc.returncode}): {err.strip().splitlines()[-1:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result.update({f"peak_rss_{k}_mb": round(v / 2**20, 1) for k, v in peak.items()})
    result["rows_per_s"] = round(result["rows"] / result["score_s"], 2)
    result["rows_per_s_with_load"] = round(result["rows"] / result["seconds"], 2)
    for key in ("seconds", "load_s", "score_s", "parent_vmhwm_mb"):
        result[key] = round(result[key], 2)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", default="runs/demo")
    parser.add_argument("--model", default="Q8_0")
    parser.add_argument("--rows", type=int, default=20000)
    parser.add_argument("--workers", default="1,2")
    parser.add_argument("--input", default=None)
    parser.add_argument("--text-column", default="text")
    parser.add_argument("--chunk-rows", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="predict-bulk-") as tmp:
        folder = Path(tmp)
        source, column, described = make_input(args, folder)
        runs = {}
        for workers in [int(w) for w in args.workers.split(",")]:
            spec = {"run": args.run, "model": args.model, "input": str(source), "text_column": column,
                    "chunk_rows": args.chunk_rows, "batch_size": args.batch_size, "workers": workers,
                    "output": str(folder / f"out-{workers}.parquet")}
            runs[f"workers_{workers}"] = measure(spec)
        import pyarrow.parquet as pq

        tables = [pq.read_table(folder / f"out-{w}.parquet") for w in args.workers.split(",")]
        same = all(t.equals(tables[0]) for t in tables[1:])
        labels_same = all(t.column("label").equals(tables[0].column("label")) for t in tables[1:])
    report = {"benchmark": "predict_bulk", "input": described, "rows": args.rows, "run": args.run,
              "model": args.model, "chunk_rows": args.chunk_rows, "batch_size": args.batch_size, "runs": runs,
              "outputs_identical": same, "labels_identical": labels_same, "cpu": cpu(),
              "loadavg_before": [round(x, 2) for x in load_before],
              "loadavg_after": [round(x, 2) for x in os.getloadavg()]}
    ones = runs.get("workers_1", {}).get("rows_per_s")
    twos = runs.get("workers_2", {}).get("rows_per_s")
    if ones and twos:
        report["workers_2_over_1"] = round(twos / ones, 3)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
