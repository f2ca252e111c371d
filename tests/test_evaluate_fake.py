"""The evaluator end to end on fake backends: known answers, failures, bad input."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import numpy as np
import pytest

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate import EvaluateConfig, ModelSpec, evaluate_backends
from tunegguf.evaluate.backends.base import Backend
from tunegguf.evaluate.backends.fake import FakeBackend
from tunegguf.evaluate.runner import check_examples, select_gguf_files
from tunegguf.io import read_jsonl

LABELS = ["negative", "positive"]
VOCAB = 200
# The fake tokenizer maps a character to its code point, so "negative" starts with 110, "positive" with 112.
NEG, POS = ord("n"), ord("p")


def make_examples(n: int = 30) -> list[Example]:
    return [Example(id=f"r{i}", text=f"review {i}", label=LABELS[i % 2]) for i in range(n)]


def prompt_of(example: Example) -> str:
    return f"Text: {example.text}\nAnswer: "


def row_of(prompt: str) -> int:
    return int(prompt.split()[2])


def logits_fn(truth: dict[str, str], noise: float = 0.0, flip_every: int = 0):
    """Seeded random logits with the true label's token pushed up (down on every 5th row)."""

    def logits(prompt: str) -> np.ndarray:
        i = row_of(prompt)
        x = np.random.default_rng(zlib.crc32(prompt.encode())).normal(0, 1, VOCAB)
        x[NEG if truth[prompt] == "negative" else POS] += -3.0 if i % 5 == 0 else 3.0
        if noise:
            x += np.random.default_rng(i + 1000).normal(0, noise, VOCAB)
        if flip_every and i % flip_every == 0:
            x[NEG], x[POS] = x[POS], x[NEG]
        return x

    return logits


@pytest.fixture
def setup():
    examples = make_examples()
    prompts = [prompt_of(e) for e in examples]
    truth = {p: e.label for p, e in zip(prompts, examples)}
    return examples, prompts, truth


def run_fakes(tmp_path: Path, examples, prompts, specs, config: EvaluateConfig | None = None, **kw):
    return evaluate_backends(
        config or EvaluateConfig(bootstrap=200, modes=["labels"], plots=False),
        examples=examples, prompts=prompts, labels=LABELS, words=LABELS, models=specs, out_dir=tmp_path / "eval", **kw,
    )


def test_fake_backend_satisfies_protocol():
    assert isinstance(FakeBackend("x", lambda p: np.zeros(3)), Backend)


def test_identical_gguf_holds_and_noisy_gguf_fails(tmp_path, setup):
    examples, prompts, truth = setup
    answer = lambda p: (truth[p], True)  # noqa: E731
    opened: list[str] = []
    backends: dict[str, FakeBackend] = {}

    def factory(name, **kw):
        def open_backend():
            # One model at a time: the previous backend must be closed before the next opens.
            assert all(b.closed for b in backends.values())
            opened.append(name)
            backends[name] = FakeBackend(name, **kw)
            return backends[name]
        return open_backend

    specs = [
        ModelSpec("hf", "hf", factory("hf", logits_for=logits_fn(truth), answer_for=answer)),
        ModelSpec("same", "gguf", factory("same", logits_for=logits_fn(truth), answer_for=answer)),
        ModelSpec("noisy", "gguf", factory("noisy", logits_for=logits_fn(truth, noise=0.3, flip_every=7),
                                           answer_for=answer)),
    ]
    result = run_fakes(tmp_path, examples, prompts, specs, EvaluateConfig(bootstrap=200))
    assert opened == ["hf", "same", "noisy"]
    assert all(b.closed for b in backends.values())

    assert result.verdicts["same"]["holds"], result.verdicts["same"]
    noisy = result.verdicts["noisy"]
    assert not noisy["holds"]
    assert any("labels: agreement" in r for r in noisy["reasons"])

    report = json.loads(result.report_json.read_text())
    same = report["parity"]["same"]
    assert same["next_token"]["mean_kl"] == pytest.approx(0.0, abs=1e-9)
    assert same["next_token"]["top1_agreement"] == 1.0
    assert same["modes"]["labels"]["flips"] == []
    noisy_block = report["parity"]["noisy"]
    flips = noisy_block["modes"]["labels"]["flips"]
    # Rows 0, 7, 14, 21, 28 have the label logits swapped: the prediction flips on each.
    assert sorted(f["id"] for f in flips) == sorted(f"r{i}" for i in range(0, 30, 7))
    assert all(f["hf"] != f["gguf"] and "kl" in f for f in flips)
    assert noisy_block["next_token"]["mean_kl"] > 0.01
    assert noisy_block["modes"]["labels"]["agreement"] == pytest.approx(25 / 30)

    # Every 5th row has its label pushed the wrong way: HF accuracy is exactly 24/30.
    assert result.metrics["hf"]["labels"]["accuracy"] == pytest.approx(24 / 30)
    assert result.metrics["hf"]["generate"]["accuracy"] == 1.0
    assert result.metrics["hf"]["generate"]["stopped_at_eos_rate"] == 1.0

    rows = read_jsonl(result.predictions)
    assert len(rows) == 3 * 30
    first = rows[0]
    assert {"model", "id", "label", "pred", "probs", "generated", "stopped_at_eos", "label_mass"} <= set(first)
    assert sum(first["probs"].values()) == pytest.approx(1.0, abs=1e-5)
    assert 0 < first["label_mass"] < 1
    for path in (result.report_md, result.report_html, result.report_json, result.predictions):
        assert path.is_file() and path.stat().st_size > 0
    html = result.report_html.read_text()
    # Confusion matrices, probability scatter, speed (no quant ladder: fakes have no file size).
    assert html.count("data:image/png;base64,") == 3
    # The reference log-probs scratch file is gone.
    assert not list((tmp_path / "eval").glob(".reference-logprobs*"))


def test_unparseable_generations_fail_without_crashing(tmp_path, setup):
    examples, prompts, truth = setup
    specs = [
        ModelSpec("hf", "hf", lambda: FakeBackend("hf", logits_fn(truth), lambda p: (truth[p], True))),
        ModelSpec("chatty", "gguf", lambda: FakeBackend(
            "chatty", logits_fn(truth), lambda p: (f"I think it is {truth[p]} because", False))),
    ]
    config = EvaluateConfig(bootstrap=100, modes=["generate"], plots=False)
    result = run_fakes(tmp_path, examples, prompts, specs, config)
    gen = result.metrics["chatty"]["generate"]
    assert gen["unparsed_rate"] == 1.0
    assert gen["stopped_at_eos_rate"] == 0.0
    assert gen["accuracy"] == 0.0
    v = result.verdicts["chatty"]
    assert not v["holds"]
    assert any("unparseable" in r for r in v["reasons"])


def test_both_models_unparseable_still_fails(tmp_path, setup):
    examples, prompts, truth = setup
    chatty = lambda p: ("Sure! Here you go", False)  # noqa: E731
    specs = [
        ModelSpec("hf", "hf", lambda: FakeBackend("hf", logits_fn(truth), chatty)),
        ModelSpec("q", "gguf", lambda: FakeBackend("q", logits_fn(truth), chatty)),
    ]
    config = EvaluateConfig(bootstrap=0, modes=["generate"], plots=False)
    result = run_fakes(tmp_path, examples, prompts, specs, config)
    assert not result.verdicts["q"]["holds"]
    assert result.verdicts["q"]["reasons"] == [
        "generate: 100% of answers unparseable (HF: 100%) > max_unparsed_rate 20%"
    ]


def test_failed_gguf_is_recorded_and_later_models_still_run(tmp_path, setup):
    examples, prompts, truth = setup

    def crash():
        raise TuneGGUFError("llama.cpp crashed on bad.gguf (signal 11)")

    answer = lambda p: (truth[p], True)  # noqa: E731
    specs = [
        ModelSpec("hf", "hf", lambda: FakeBackend("hf", logits_fn(truth), answer)),
        ModelSpec("bad", "gguf", crash),
        ModelSpec("halfway", "gguf", lambda: FakeBackend("halfway", logits_fn(truth), answer, fail_on="generate")),
        ModelSpec("good", "gguf", lambda: FakeBackend("good", logits_fn(truth), answer)),
    ]
    result = run_fakes(tmp_path, examples, prompts, specs, EvaluateConfig(bootstrap=200, plots=False))
    assert result.verdicts["bad"] == {
        "holds": False,
        "reasons": ["could not run: llama.cpp crashed on bad.gguf (signal 11)"],
        "summary": "parity fails: could not run: llama.cpp crashed on bad.gguf (signal 11)",
    }
    assert not result.verdicts["halfway"]["holds"]
    assert result.verdicts["good"]["holds"]
    report = json.loads(result.report_json.read_text())
    assert report["models"]["bad"]["status"] == "failed"
    assert report["parity"]["halfway"]["modes"] == {}  # no half results posing as parity
    assert "signal 11" in result.report_md.read_text()


def test_hf_failure_is_an_error(tmp_path, setup):
    examples, prompts, truth = setup
    specs = [ModelSpec("hf", "hf", lambda: FakeBackend("hf", logits_fn(truth), fail_on="next_token_logprobs"))]
    with pytest.raises(TuneGGUFError, match="Transformers model could not be scored"):
        run_fakes(tmp_path, examples, prompts, specs)


def test_tokenizer_mismatch_is_a_parity_failure(tmp_path, setup):
    examples, prompts, truth = setup
    # This "GGUF" splits digits differently: one prompt in ten tokenizes to other ids.
    def other_tokenizer(text: str) -> list[int]:
        ids = [ord(ch) % 1000 for ch in text]
        return ids + [7] if "review 1\n" in text else ids

    specs = [
        ModelSpec("hf", "hf", lambda: FakeBackend("hf", logits_fn(truth))),
        ModelSpec("odd", "gguf", lambda: FakeBackend("odd", logits_fn(truth), tokenize_for=other_tokenizer)),
    ]
    result = run_fakes(tmp_path, examples, prompts, specs)
    v = result.verdicts["odd"]
    assert not v["holds"]
    assert len(v["reasons"]) == 1 and "1 of 30 prompts tokenize differently" in v["reasons"][0]
    tok = json.loads(result.report_json.read_text())["parity"]["odd"]["tokenizer"]
    assert tok["mismatched_ids"] == ["r1"]
    assert tok["first_mismatch"]["position"] == len(prompts[1])


def test_vocab_size_mismatch_skips_kl_and_fails(tmp_path, setup):
    examples, prompts, truth = setup
    wide = lambda p: np.concatenate([logits_fn(truth)(p), np.zeros(50)])  # noqa: E731
    specs = [
        ModelSpec("hf", "hf", lambda: FakeBackend("hf", logits_fn(truth))),
        ModelSpec("wide", "gguf", lambda: FakeBackend("wide", wide)),
    ]
    result = run_fakes(tmp_path, examples, prompts, specs)
    assert any("vocabulary size differs (HF 200 vs GGUF 250)" in r for r in result.verdicts["wide"]["reasons"])


def test_collapsed_model_is_warned(tmp_path, setup):
    examples, prompts, truth = setup
    always_pos = lambda p: np.where(np.arange(VOCAB) == POS, 5.0, 0.0)  # noqa: E731
    specs = [ModelSpec("hf", "hf", lambda: FakeBackend("hf", always_pos))]
    config = EvaluateConfig(bootstrap=0, modes=["labels"], plots=False)
    result = run_fakes(tmp_path, examples, prompts, specs, config)
    assert result.metrics["hf"]["labels"]["collapsed"]
    assert any("majority collapse" in w for w in result.warnings)
    assert "majority collapse" in result.report_md.read_text()


# ---- bad input ------------------------------------------------------------------------


def test_label_outside_label_list_names_the_row():
    rows = make_examples(4) + [Example(id="x9", text="meh", label="neutral")]
    with pytest.raises(TuneGGUFError, match=r"^row 5 \(id 'x9'\): label 'neutral' is not one of"):
        check_examples(rows, LABELS)


def test_other_bad_rows():
    with pytest.raises(TuneGGUFError, match="row 2 .*has no label"):
        check_examples([Example(id="a", text="t", label="positive"), Example(id="b", text="t")], LABELS)
    with pytest.raises(TuneGGUFError, match="row 2 .*id is used twice"):
        check_examples([Example(id="a", text="t", label="positive")] * 2, LABELS)
    with pytest.raises(TuneGGUFError, match="no labels given"):
        check_examples(make_examples(2), [])
    with pytest.raises(TuneGGUFError, match="has no text"):
        check_examples([Example(id="i", instruction="do", output="x")], LABELS)


def test_select_gguf_files(tmp_path):
    a, b = tmp_path / "m-Q8_0.gguf", tmp_path / "m-Q4_K_M.gguf"
    a.write_bytes(b"x")
    b.write_bytes(b"x")
    files = {"Q8_0": a, "Q4_K_M": b}
    assert select_gguf_files(files, []) == files
    assert select_gguf_files(files, ["Q4_K_M"]) == {"Q4_K_M": b}
    with pytest.raises(TuneGGUFError, match="did you mean 'Q4_K_M'"):
        select_gguf_files(files, ["Q4_K_S"])
    with pytest.raises(TuneGGUFError, match="not found"):
        select_gguf_files({"Q5": tmp_path / "missing.gguf"}, [])
    with pytest.raises(TuneGGUFError, match="cannot be named 'hf'"):
        select_gguf_files({"hf": a}, [])


def test_config_checks():
    from tunegguf.config.typed import from_dict

    with pytest.raises(TuneGGUFError, match="evaluate.modes"):
        from_dict(EvaluateConfig, {"modes": []})
    with pytest.raises(TuneGGUFError, match="'labels', 'generate'"):
        from_dict(EvaluateConfig, {"modes": ["label"]})


def test_a_killed_evaluations_scratch_is_removed_by_the_next(tmp_path, setup):
    """The reference log-probs live in a pid-named scratch dir beside the report: one left by
    a killed evaluation (its process is gone) is removed, and none is left after a run."""
    import subprocess
    import sys

    examples, prompts, truth = setup
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / "eval" / f".reference-logprobs.{int(dead.stdout)}-abcdefgh.tmp"
    stale.mkdir(parents=True)
    (stale / "hf.npy").write_bytes(b"\0" * 64)
    specs = [ModelSpec("hf", "hf", lambda: FakeBackend("hf", logits_for=logits_fn(truth)))]
    run_fakes(tmp_path, examples, prompts, specs)
    assert not stale.exists()
    assert not list((tmp_path / "eval").glob(".reference-logprobs.*"))
