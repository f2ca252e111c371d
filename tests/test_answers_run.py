"""The answers evaluation end to end with fake backends (id level): ordering, streaming
through the memory-mapped reference, verdicts, report.json and predictions rows."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.answers import run as answers_run
from tunegguf.evaluate.answers.run import evaluate_answers
from tunegguf.evaluate.backends import ModelKind
from tunegguf.evaluate.backends.fake import FakeBackend
from tunegguf.evaluate.config import EvaluateConfig
from tunegguf.evaluate.recommend import recommend
from tunegguf.evaluate.runner import ModelSpec
from tunegguf.evaluate.scoring import ReferenceLogprobs

VOCAB = 8
STOP = 0
LETTERS = "_abcdefg"


def decode(ids):
    return "".join(LETTERS[i] for i in ids)


def base_logits(ids):
    """A tiny language: after id k comes k+1, after 3 the stop; a soft distribution so
    KL between perturbed copies is not trivially 0 or infinite."""
    last = ids[-1]
    logits = np.linspace(0.0, 0.7, VOCAB)
    logits[STOP if last == 3 else (last % (VOCAB - 1)) + 1] += 4.0
    return logits


def perturbed_logits(ids):
    rng = np.random.default_rng(sum(i * 31 ** k for k, i in enumerate(ids)) % (2**32))
    return base_logits(ids) + rng.normal(scale=1.5, size=VOCAB)


def never_stops(ids):
    logits = base_logits(ids)
    logits[STOP] = -30.0
    return logits


def fake(name, fn):
    return FakeBackend(name, logits_for_ids=fn, stop_ids=[STOP], detokenize=decode,
                       tokenize_for=lambda text: [LETTERS.index(c) for c in text])


# Prompts (as ids) and the reference answers the base language gives, end-of-turn included.
PROMPTS = [[4, 5, 1], [6, 2], [5, 3], [7, 1]]
ANSWERS = [[2, 3, STOP], [3, STOP], [STOP], [2, 3, STOP]]
REFERENCES = ["bc", "c", "", "bd"]  # the last row's reference is not what the model says
EXAMPLES = [Example(id=f"r{i}", instruction=f"task {i}", output=ref) for i, ref in enumerate(REFERENCES)]


@pytest.fixture
def reports(monkeypatch):
    """write_reports stand-in: report.json and predictions.jsonl only (the renderer is helper D's)."""
    import tunegguf.evaluate.report as report_module

    def write(out_dir, report, predictions):
        out_dir = Path(out_dir)
        paths = {k: out_dir / n for k, n in (("json", "report.json"), ("md", "report.md"),
                                              ("html", "report.html"), ("predictions", "predictions.jsonl"))}
        paths["json"].write_text(json.dumps(report, default=str))
        paths["predictions"].write_text("".join(json.dumps(r) + "\n" for r in predictions))
        return paths

    monkeypatch.setattr(report_module, "write_reports", write)


@pytest.fixture
def stores(monkeypatch):
    """Every reference store made, with its array's type and shape and every slice read."""
    made = []

    class Spy(ReferenceLogprobs):
        def __init__(self, path, n, vocab):
            super().__init__(path, n, vocab)
            self.kind, self.shape, self.reads = type(self._array), self._array.shape, []
            self.file = Path(path)
            made.append(self)

        def read(self, start, stop):
            self.reads.append((start, stop))
            return super().read(start, stop)

    monkeypatch.setattr(answers_run, "ReferenceLogprobs", Spy)
    return made


def gguf_file(tmp_path, name, size):
    path = tmp_path / f"model-{name}.gguf"
    path.write_bytes(b"\0" * size)
    return path


def spec(name, kind, fn, file=None):
    if fn is None:
        def fail():
            raise TuneGGUFError(f"{name}: not a GGUF file")
        return ModelSpec(name, kind, fail, file=file)
    return ModelSpec(name, kind, lambda: fake(name, fn), file=file)


def evaluate(tmp_path, models, config=None, checkable=True):
    prompts = [decode(p) for p in PROMPTS]
    return evaluate_answers(
        config or EvaluateConfig(bootstrap=50, batch_size=3), examples=EXAMPLES, prompts=prompts,
        targets=[decode(a) for a in ANSWERS], prompt_ids=PROMPTS, answer_ids=ANSWERS, models=models,
        out_dir=tmp_path / "out", decode=decode, checkable=checkable,
    )


def test_identical_perturbed_never_stopping_and_broken_ggufs(tmp_path, reports, stores):
    models = [
        spec("hf", ModelKind.HF, base_logits),
        spec("f16", ModelKind.GGUF, base_logits, gguf_file(tmp_path, "f16", 400)),
        spec("Q2_K", ModelKind.GGUF, perturbed_logits, gguf_file(tmp_path, "Q2_K", 100)),
        spec("Q4_loop", ModelKind.GGUF, never_stops, gguf_file(tmp_path, "Q4_loop", 150)),
        spec("broken", ModelKind.GGUF, None, gguf_file(tmp_path, "broken", 50)),
    ]
    result = evaluate(tmp_path, models)
    report = json.loads(result.report_json.read_text())
    assert report["task"] == "answers"
    assert report["n_examples"] == 4 and report["n_answer_tokens"] == 9
    # The stage table keeps f16's log-probs too (the quants' parent); HF's are shared, not copied.
    assert report["reference_store"] == {"kind": "memmap", "exact": True, "bytes": 9 * VOCAB * 4,
                                         "stage_bytes": 9 * VOCAB * 4}

    # RAM bound, structurally: one memory-mapped [answer tokens, vocab] store, read one
    # batch's slice at a time (batch_size=3 answers: tokens 0-6, then the last answer's
    # 6-9), and removed with its scratch directory afterwards.
    (store,) = stores
    assert issubclass(store.kind, np.memmap) and store.shape == (9, VOCAB)
    rows = [(0, 6), (6, 9)]
    # f16 reads each batch twice (its parity, and the stage table's HF -> f16 step, which
    # shares this store rather than copying it); the quants' stage parent is f16.
    assert store.reads == [r for r in rows for _ in range(2)] + rows * 2
    assert not store.file.exists() and not list((tmp_path / "out").glob(".*.tmp"))

    same = report["answers"]["f16"]
    assert same["teacher_forced"]["kl"]["max"] == 0.0
    assert same["teacher_forced"]["same_top"]["rate"] == 1.0
    assert same["teacher_forced"]["perplexity"]["ratio"] == pytest.approx(1.0)
    assert same["greedy"]["identical_rate"] == 1.0 and same["greedy"]["stop_agreement"] == 1.0
    assert same["greedy"]["first_divergence"]["n_diverged"] == 0
    assert same["tokenizer"]["mismatched"] == 0
    assert result.verdicts["f16"] == {"holds": True, "reasons": [], "summary": "parity holds"}

    worse = report["answers"]["Q2_K"]["teacher_forced"]
    assert worse["kl"]["mean"] > 0.05
    assert [b["n"] for b in worse["kl_by_position"]] == [4, 3, 2]
    assert not result.verdicts["Q2_K"]["holds"]
    assert any("evaluate.answers.max_mean_kl" in r for r in result.verdicts["Q2_K"]["reasons"])

    loop = report["answers"]["Q4_loop"]["greedy"]
    assert loop["gguf_stopped_rate"] == 0.0 and loop["hf_stopped_rate"] == 1.0 and loop["stop_agreement"] == 0.0
    assert any("evaluate.answers.min_stop_agreement" in r for r in result.verdicts["Q4_loop"]["reasons"])
    assert report["models"]["Q4_loop"]["metrics"]["mean_answer_tokens"] == 64  # the default budget

    assert report["models"]["broken"]["status"] == "failed"
    assert report["answers"]["broken"]["teacher_forced"] is None
    assert result.verdicts["broken"]["holds"] is False
    assert result.verdicts["broken"]["reasons"][0] == "could not run: broken: not a GGUF file"

    # Against the reference: the model says "bc" for the last row, the reference "bd".
    hf = report["models"]["hf"]["metrics"]
    assert hf["exact_match"] == 0.75 and hf["stopped_at_eos_rate"] == 1.0
    assert hf["nll_per_token"] == pytest.approx(
        np.mean([-math.log(np.exp(base_logits(p + a[:j]) - np.logaddexp.reduce(base_logits(p + a[:j])))[a[j]])
                 for p, a in zip(PROMPTS, ANSWERS) for j in range(len(a))]))
    assert report["answers"]["f16"]["greedy"]["vs_reference"]["flips"] == {"hf_only": 0, "gguf_only": 0,
                                                                          "mcnemar_p": 1.0}

    # The smallest file whose verdict holds, failing smaller ones listed.
    assert report["recommendation"]["choice"] == "f16" and report["recommendation"]["mode"] == "answers"
    assert recommend(report).choice == "f16"
    assert recommend(report, {"answers": {"max_mean_kl": 10.0, "max_p99_kl": 100.0, "min_same_top": 0.0,
                                          "min_greedy_match": 0.0}}).choice == "Q2_K"

    # Stage table: f16 is converted from HF, the quants are made from f16.
    steps = {s["child"]: s for s in report["stages"]["steps"]}
    assert steps["f16"]["step"] == "conversion" and steps["f16"]["mean_kl"] == 0.0
    assert steps["Q2_K"]["parent"] == "f16" and steps["Q2_K"]["mean_kl"] == pytest.approx(worse["kl"]["mean"])
    # The looping file puts almost no mass on the stop HF is sure of: the largest KL of all.
    assert steps["Q4_loop"]["mean_kl"] > steps["Q2_K"]["mean_kl"]
    assert report["stages"]["largest_loss"]["child"] == "Q4_loop"

    view = {row["id"]: row for row in report["examples"]}
    assert view["r0"]["reference"] == "bc" and view["r0"]["answers"]["hf"]["text"] == "bc"
    assert view["r0"]["answers"]["hf"]["first_divergence"] is None
    looped = view["r2"]["answers"]["Q4_loop"]
    # HF stops at once on r2; the looping file writes on: divergence at token 0, character 0.
    assert looped["first_divergence"] == 0 and looped["divergence_char"] == 0 and not looped["stopped"]
    assert view["r0"]["answers"]["Q4_loop"]["first_divergence"] == 2
    assert view["r0"]["answers"]["Q4_loop"]["divergence_char"] == 2
    assert view["r2"]["answers"]["f16"]["mean_kl"] == 0.0
    assert "broken" not in view["r0"]["answers"]

    predictions = [json.loads(line) for line in result.predictions.read_text().splitlines()]
    assert len(predictions) == 4 * 4  # every model that ran, every row
    row = next(p for p in predictions if p["model"] == "Q2_K" and p["id"] == "r0")
    assert set(row) >= {"model", "id", "generated", "stopped", "exact", "chrf", "mean_kl", "max_kl",
                        "first_divergence", "nll"}
    assert row["mean_kl"] == pytest.approx(view["r0"]["answers"]["Q2_K"]["mean_kl"])
    assert result.metrics["hf"]["answers"]["exact_match"] == 0.75
    assert report["models"]["hf"]["timing"]["teacher_forced"]["answer_tokens"] == 9


def test_the_adapter_is_scored_first_and_blamed_for_the_merge(tmp_path, reports, stores):
    models = [
        spec("hf+adapter", ModelKind.HF_ADAPTER, perturbed_logits),
        spec("hf", ModelKind.HF, base_logits),
        spec("f16", ModelKind.GGUF, base_logits, gguf_file(tmp_path, "f16", 400)),
    ]
    report = json.loads(evaluate(tmp_path, models, checkable=False).report_json.read_text())
    assert list(report["models"]) == ["hf+adapter", "hf", "f16"]
    assert list(report["answers"]) == ["f16"]
    # The adapter's log-probs are kept for the merge step; f16 is no one's parent here.
    assert report["reference_store"]["stage_bytes"] == 9 * VOCAB * 4
    steps = {s["child"]: s for s in report["stages"]["steps"]}
    assert steps["hf"]["step"] == "merge" and steps["hf"]["mean_kl"] > 0.05
    assert steps["f16"]["mean_kl"] == 0.0
    assert report["stages"]["largest_loss"]["step"] == "merge"
    # Not a checkable set: no exact match, chrF only.
    assert report["models"]["hf"]["metrics"]["exact_match"] is None
    assert report["answers"]["f16"]["greedy"]["vs_reference"]["flips"] is None
    assert report["examples"][0]["answers"]["hf"]["exact"] is None


def test_the_reference_must_run(tmp_path, reports, stores):
    with pytest.raises(TuneGGUFError, match="the Transformers model could not be scored: hf: not a GGUF file"):
        evaluate(tmp_path, [spec("hf", ModelKind.HF, None)])
    with pytest.raises(TuneGGUFError, match="first model to evaluate must be the Transformers reference"):
        evaluate(tmp_path, [spec("f16", ModelKind.GGUF, base_logits, gguf_file(tmp_path, "f16", 4))])


def test_a_failing_verb_fails_only_that_model_and_closes_it(tmp_path, reports, stores):
    opened = []

    def open_failing():
        backend = FakeBackend("Q8_0", logits_for_ids=base_logits, stop_ids=[STOP], detokenize=decode,
                              tokenize_for=lambda text: [LETTERS.index(c) for c in text],
                              fail_on="generate_ids")
        opened.append(backend)
        return backend

    models = [spec("hf", ModelKind.HF, base_logits),
              ModelSpec("Q8_0", ModelKind.GGUF, open_failing, file=gguf_file(tmp_path, "Q8_0", 10))]
    result = evaluate(tmp_path, models)
    assert opened[0].closed
    assert result.verdicts["Q8_0"]["reasons"] == ["could not run: fake backend Q8_0 failed in generate_ids"]


def test_mismatched_inputs_are_one_line_errors(tmp_path, reports):
    with pytest.raises(TuneGGUFError, match="one of each per row"):
        evaluate_answers(EvaluateConfig(), examples=EXAMPLES, prompts=["a"], targets=["b"], prompt_ids=PROMPTS,
                         answer_ids=ANSWERS, models=[spec("hf", ModelKind.HF, base_logits)], out_dir=tmp_path)


def test_vocabulary_mismatch_fails_the_verdict(tmp_path, reports, stores):
    wide = lambda ids: np.concatenate([base_logits(ids), [-5.0]])  # noqa: E731
    models = [spec("hf", ModelKind.HF, base_logits), spec("Q8_0", ModelKind.GGUF, wide, gguf_file(tmp_path, "q", 10))]
    result = evaluate(tmp_path, models)
    assert result.verdicts["Q8_0"]["reasons"][0].startswith("vocabulary size differs (HF 8 vs Q8_0 9)")


def test_a_row_over_the_context_is_refused_before_any_model_runs(tmp_path, reports):
    opened = []
    models = [ModelSpec("hf", ModelKind.HF, lambda: opened.append(1) or fake("hf", base_logits))]
    config = EvaluateConfig(n_ctx=64, answers={"max_new_tokens": 62})
    with pytest.raises(TuneGGUFError, match=r"row 1 \(id 'r0'\): the prompt \(3 tokens\).*over evaluate.n_ctx \(64\)"):
        evaluate(tmp_path, models, config=config)
    assert not opened


def test_answers_settings_load_from_the_run_config_and_are_checked():
    from tunegguf.config.run import load_run_config

    config = load_run_config(None, ["evaluate.answers.max_mean_kl=0.2", "evaluate.answers.max_new_tokens=32"])
    assert (config.evaluate.answers.max_mean_kl, config.evaluate.answers.max_new_tokens) == (0.2, 32)
    with pytest.raises(TuneGGUFError, match="^evaluate.answers.min_stop_agreement must be between 0 and 1"):
        load_run_config(None, ["evaluate.answers.min_stop_agreement=1.5"])
    with pytest.raises(TuneGGUFError, match="did you mean 'min_same_top'"):
        load_run_config(None, ["evaluate.answers.min_sametop=0.5"])
    # A small n_ctx is no error for a classification config: the answers budget is held to it
    # per row, only when answer rows are scored (test above).
    assert EvaluateConfig(n_ctx=64, answers={"max_new_tokens": 64}).n_ctx == 64
