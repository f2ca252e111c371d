"""Diagnostics on the real tiny models: template/BOS/stop checks and the stage chain end to end."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunegguf.data.example import Example
from tunegguf.evaluate import EvaluateConfig
from tunegguf.evaluate.template_checks import template_checks
from tunegguf.prompts.config import PromptConfig

pytestmark = pytest.mark.slow
LABELS = ["negative", "positive"]
SAMPLE = Example(id="s1", text="A warm, funny film.", label="positive")


def by_name(result):
    return {c.name: c for c in result.checks}


def test_smollm2_templates_bos_and_stops_agree(smollm2_dir, smollm2_f16_gguf, tmp_path):
    from tunegguf.export.modelfile import write_modelfile

    modelfile = write_modelfile(
        tmp_path / "Modelfile.F16", smollm2_f16_gguf.name,
        chat_template=json.loads((smollm2_dir / "tokenizer_config.json").read_text()).get("chat_template")
        or (smollm2_dir / "chat_template.jinja").read_text(),
        specials={"bos_token": "", "eos_token": "<|im_end|>"}, gguf_adds_bos=False,
        stop_tokens=["<|im_end|>"], system_prompt=None, classifier=True,
    )
    result = template_checks(smollm2_dir, smollm2_f16_gguf, modelfile, PromptConfig(), LABELS, SAMPLE)
    checks = by_name(result)
    assert result.passed, result.failed()
    assert set(result.renderings) == {"training prompt", "HF apply_chat_template", "GGUF template (llama-cpp-python)",
                                      "Ollama Modelfile TEMPLATE"}
    assert result.diffs == {}
    assert checks["bos_llama_cpp_python_chat"].passed and "1 leading BOS" in checks["bos_llama_cpp_python_chat"].detail
    assert checks["stop_gguf_eog"].passed and checks["stop_modelfile"].passed
    # A Modelfile that forgot the end-of-turn stop fails exactly that check.
    text = modelfile.read_text().replace('PARAMETER stop "<|im_end|>"\n', "")
    modelfile.write_text(text)
    broken = template_checks(smollm2_dir, smollm2_f16_gguf, modelfile, PromptConfig(), LABELS, SAMPLE)
    assert [c.name for c in broken.failed()] == ["stop_modelfile"]


def test_tiny_llama3_double_bos_and_template_drift_are_flagged(tiny_llama3_dir, tiny_llama3_f16_gguf):
    result = template_checks(tiny_llama3_dir, tiny_llama3_f16_gguf, None, PromptConfig(), LABELS, SAMPLE)
    checks = by_name(result)
    # llama-cpp-python's chat path adds no BOS (the template writes it)...
    assert checks["bos_llama_cpp_python_chat"].passed
    # ...but a raw prompt with the file's add_bos_token gets a second one.
    raw = checks["bos_raw_prompt_add_bos_from_metadata"]
    assert raw.passed is False and "double BOS" in raw.detail
    assert result.token_ids["raw prompt, add_bos from metadata"][:2] == [128000, 128000]
    assert checks["stop_gguf_eog"].passed  # <|eot_id|> ends generation
    # Training with a ChatML prompt on a Llama 3 model: every runtime template differs, with a diff.
    drift = template_checks(tiny_llama3_dir, tiny_llama3_f16_gguf, None, PromptConfig(format="chatml"), LABELS, SAMPLE)
    assert by_name(drift)["gguf_template_llama_cpp_python_matches_training"].passed is False
    diff = drift.diffs["training prompt vs GGUF template (llama-cpp-python)"]
    assert "-<|im_start|>user" in diff and "+<|begin_of_text|><|start_header_id|>user" in diff


@pytest.fixture(scope="module")
def tiny_chain(tiny_llama3_dir, tmp_path_factory):
    """A random LoRA adapter on tiny-llama3, its merged checkpoint, f16 and Q8_0 GGUFs."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunegguf.export.convert import convert_to_gguf
    from tunegguf.export.quantize import quantize_gguf

    root = tmp_path_factory.mktemp("chain")
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(tiny_llama3_dir, dtype=torch.float32)
    # init_lora_weights=False: B is random too, so the adapter changes the outputs.
    peft_model = get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                                 init_lora_weights=False))
    peft_model.save_pretrained(root / "adapter")
    base = AutoModelForCausalLM.from_pretrained(tiny_llama3_dir, dtype=torch.float32)
    merged = PeftModel.from_pretrained(base, root / "adapter").merge_and_unload()
    merged.save_pretrained(root / "merged")
    AutoTokenizer.from_pretrained(tiny_llama3_dir).save_pretrained(root / "merged")
    f16 = convert_to_gguf(root / "merged", root / "model-f16.gguf", "f16")
    q8 = quantize_gguf(f16, root / "model-Q8_0.gguf", "Q8_0")
    return root, f16, q8


def test_stage_chain_end_to_end(tiny_llama3_dir, tiny_chain, tmp_path):
    from tunegguf.evaluate.runner import run

    root, f16, q8 = tiny_chain
    examples = [Example(id=f"e{i}", text=t, label=LABELS[i % 2]) for i, t in enumerate(
        ["Dull.", "Lovely!", "Awful plot.", "Great cast.", "Boring.", "A joy.", "Bad.", "Superb."])]
    config = EvaluateConfig(modes=["labels"], bootstrap=50, plots=False, n_threads=1, batch_size=4)
    result = run(config, prompt=PromptConfig(), examples=examples, labels=LABELS, hf_model=root / "merged",
                 gguf_files={"F16": f16, "Q8_0": q8}, out_dir=tmp_path / "eval",
                 adapter_reference=(str(tiny_llama3_dir), root / "adapter"))
    report = json.loads(result.report_json.read_text())
    steps = {s["step"]: s for s in report["stages"]["steps"]}
    assert list(steps) == ["merge", "conversion", "quantization (Q8_0)"]
    # Merging in float32 changes nothing measurable; f16 conversion and Q8_0 add small KL.
    assert steps["merge"]["agreement"] == 1.0 and steps["merge"]["mean_kl"] < 1e-6
    assert steps["conversion"]["parent"] == "hf" and steps["conversion"]["child"] == "F16"
    assert steps["quantization (Q8_0)"]["parent"] == "F16"
    assert steps["quantization (Q8_0)"]["mean_kl"] is not None
    assert report["models"]["hf+adapter"]["info"]["merged"] is False
    assert report["template_checks"]["name"] == "F16" and report["template_checks"]["checks"]
    assert report["recommendation"]["rows"]
    md = result.report_md.read_text()
    assert "## Where did the difference come from?" in md and "## Templates and tokens" in md
