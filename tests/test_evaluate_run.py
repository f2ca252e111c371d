"""`tunegguf.evaluate.run` end to end with the real SmolLM2 model, its f16 GGUF and a Q8_0."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunegguf.data.example import Example
from tunegguf.evaluate import EvaluateConfig, run
from tunegguf.io import read_jsonl
from tunegguf.prompts import PromptConfig

LABELS = ["negative", "positive"]
POSITIVE = [
    "The headphones sound wonderful and the battery lasts all week.",
    "A brilliant film with a superb cast and a moving ending.",
    "This blender is powerful, quiet and easy to clean.",
    "Great laptop: fast, light, and the keyboard feels excellent.",
    "The documentary was fascinating from start to finish.",
    "Comfortable shoes, good grip, and they look fantastic.",
    "Not bad at all, the coffee maker brews quickly and tastes great.",
    "The comedy had me laughing the whole time.",
    "Solid backpack with strong zippers and plenty of pockets.",
    "The animated feature is charming and beautifully drawn.",
    "I love this desk lamp, bright and sturdy.",
    "The thriller kept me on the edge of my seat, superb pacing.",
]
NEGATIVE = [
    "The headphones broke after two days and sound tinny.",
    "A dull film with wooden acting and a pointless plot.",
    "This blender is loud, leaks, and the lid cracked.",
    "Terrible laptop: slow, hot, and the screen flickers.",
    "The documentary was boring and badly edited.",
    "The shoes fell apart within a week, awful quality.",
    "Not great, the coffee maker takes forever and tastes burnt.",
    "The comedy was painfully unfunny.",
    "Cheap backpack, the straps tore on the first trip.",
    "The horror movie was predictable and not scary at all.",
    "I regret buying this desk lamp, it flickers constantly.",
    "The sequel is a mess with a terrible villain.",
]


def demo_examples() -> list[Example]:
    rows = []
    for i, (pos, neg) in enumerate(zip(POSITIVE, NEGATIVE)):
        rows.append(Example(id=f"p{i}", text=pos, label="positive"))
        rows.append(Example(id=f"n{i}", text=neg, label="negative"))
    return rows


@pytest.fixture(scope="module")
def smollm2_q8_gguf(smollm2_f16_gguf, tmp_path_factory) -> Path:
    import llama_cpp

    out = tmp_path_factory.mktemp("quant") / "smollm2-Q8_0.gguf"
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q8_0
    assert llama_cpp.llama_model_quantize(str(smollm2_f16_gguf).encode(), str(out).encode(), params) == 0
    return out


@pytest.mark.slow
def test_full_run_hf_f16_q8(tmp_path, smollm2_dir, smollm2_f16_gguf, smollm2_q8_gguf):
    examples = demo_examples()
    assert len(examples) == 24
    # The untuned base model drifts from the one-word format on about half of these rows
    # (HF and GGUF alike); the unparsed-rate rule is tested with fakes, the conversion here.
    config = EvaluateConfig(max_new_tokens=3, bootstrap=300, max_unparsed_rate=1.0)
    extra = {
        "fine-tune": {"best_step": 60, "history": [{"step": 20, "accuracy": 0.7}, {"step": 40, "accuracy": 0.85}]},
        "export manifest": [{"quant": "f16", "path": str(smollm2_f16_gguf)}, {"quant": "Q8_0", "path": "q8"}],
    }
    result = run(
        config, prompt=PromptConfig(), examples=examples, labels=LABELS, hf_model=smollm2_dir,
        gguf_files={"f16": smollm2_f16_gguf, "Q8_0": smollm2_q8_gguf}, out_dir=tmp_path / "eval",
        extra_sections=extra,
    )
    for path in (result.report_json, result.report_md, result.report_html, result.predictions):
        assert path.is_file() and path.stat().st_size > 0
    report = json.loads(result.report_json.read_text())
    assert list(report["models"]) == ["hf", "f16", "Q8_0"]

    for name in ("f16", "Q8_0"):
        block = report["parity"][name]
        assert block["tokenizer"]["mismatched"] == 0
        assert block["tokenizer"]["label_token_ids_equal"]
        assert block["size_bytes"] == Path(block["file"]).stat().st_size
        verdict = result.verdicts[name]
        assert verdict["holds"] == (verdict["reasons"] == [])
    f16 = report["parity"]["f16"]
    assert f16["next_token"]["mean_kl"] < 0.001
    assert f16["next_token"]["top1_agreement"] == 1.0
    assert f16["modes"]["labels"]["agreement"] == 1.0
    assert f16["label_probs"]["max_abs_dp"] < 0.02
    assert f16["modes"]["generate"]["agreement"] == 1.0
    assert result.verdicts["f16"]["holds"], result.verdicts["f16"]
    q8 = report["parity"]["Q8_0"]
    # Q8_0 moves the distribution more than f16, yet stays far below the KL threshold.
    assert f16["next_token"]["mean_kl"] < q8["next_token"]["mean_kl"] < 0.05
    assert report["models"]["Q8_0"]["size_bytes"] < 0.6 * report["models"]["f16"]["size_bytes"]

    for name in ("hf", "f16", "Q8_0"):
        for mode in ("labels", "generate"):
            metrics = result.metrics[name][mode]
            assert 0.0 <= metrics["accuracy"] <= 1.0
            assert metrics["ci95"]["accuracy"][0] <= metrics["accuracy"] <= metrics["ci95"]["accuracy"][1]
            assert report["models"][name]["timing"][mode]["examples_per_s"] > 0
        assert 0.0 <= result.metrics[name]["generate"]["stopped_at_eos_rate"] <= 1.0
        assert result.metrics[name]["labels"]["ece"] is not None

    rows = read_jsonl(result.predictions)
    assert len(rows) == 3 * 24
    assert {r["model"] for r in rows} == {"hf", "f16", "Q8_0"}
    assert all(r["pred"] in LABELS for r in rows)  # labels mode always picks a label
    texts = {(r["model"], r["id"]): r["generated"] for r in rows}
    same_text = sum(texts[("hf", e.id)] == texts[("f16", e.id)] for e in examples)
    assert same_text >= 23  # greedy text from f16 is the HF text, token for token

    md = result.report_md.read_text()
    assert "**f16**" in md and "parity holds" in md
    assert "## fine-tune" in md and "| 40 | 0.85 |" in md
    html = result.report_html.read_text()
    assert html.count("data:image/png;base64,") == 4
    assert "export manifest" in html
    assert "<script" not in html and "http://" not in html and "https://" not in html  # self-contained


@pytest.mark.slow
def test_mismatched_tokenizer_and_corrupt_gguf_fail_parity_without_crashing(
    tmp_path, smollm2_dir, tiny_llama3_f16_gguf
):
    corrupt = tmp_path / "corrupt.gguf"
    corrupt.write_bytes(b"GGUF" + bytes(range(256)) * 64)
    config = EvaluateConfig(modes=["labels"], limit=4, bootstrap=0, plots=False)
    result = run(
        config, prompt=PromptConfig(), examples=demo_examples(), labels=LABELS, hf_model=smollm2_dir,
        gguf_files={"llama3-tokenizer": tiny_llama3_f16_gguf, "corrupt": corrupt}, out_dir=tmp_path / "eval",
    )
    mismatch = result.verdicts["llama3-tokenizer"]
    assert not mismatch["holds"]
    assert any("4 of 4 prompts tokenize differently" in r for r in mismatch["reasons"])
    broken = result.verdicts["corrupt"]
    assert not broken["holds"]
    assert broken["reasons"][0].startswith("could not run: llama.cpp cannot load")
    assert result.metrics["hf"]["labels"]["n"] == 4
    report = json.loads(result.report_json.read_text())
    assert report["models"]["corrupt"]["status"] == "failed"
    assert "corrupt" in result.report_md.read_text()
