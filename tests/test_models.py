"""The two test models are faithful: Transformers and llama.cpp see the same tokens and logits."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from strings import varied_strings
from tunegguf.errors import TuneGGUFError


def _llama_vocab(path: Path):
    import llama_cpp

    return llama_cpp.Llama(str(path), vocab_only=True, verbose=False)


def _mismatches(tokenizer, llm, strings):
    bad = []
    for s in strings:
        hf_ids = tokenizer(s, add_special_tokens=False)["input_ids"]
        cpp_ids = llm.tokenize(s.encode("utf-8"), add_bos=False, special=True)
        if hf_ids != cpp_ids:
            bad.append((s, hf_ids, cpp_ids))
    return bad


@pytest.mark.slow
def test_smollm2_tokenizer_matches_shipped_gguf(smollm2_dir):
    from transformers import AutoTokenizer

    from tunegguf.models.smollm2 import shipped_gguf

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    specials = ["<|im_start|>", "<|im_end|>", "<|endoftext|>"]
    strings = varied_strings(520, specials)
    assert len(strings) >= 500
    bad = _mismatches(tokenizer, _llama_vocab(shipped_gguf()), strings)
    assert not bad, f"{len(bad)} of {len(strings)} differ, first: {bad[0]}"


def test_smollm2_checkpoint_metadata(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.pad_token == "<|im_end|>"
    assert tokenizer("hi", add_special_tokens=True)["input_ids"] == tokenizer("hi", add_special_tokens=False)["input_ids"]
    text = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False, add_generation_prompt=True)
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert "quantization_config" not in config
    assert config["eos_token_id"] == tokenizer.eos_token_id
    assert json.loads((smollm2_dir / "tunegguf_source.json").read_text())["source_quant"] == "Q4_1"
    assert (smollm2_dir / "model.safetensors").is_file()


@pytest.mark.slow
def test_smollm2_round_trip_gguf_metadata_and_tokens(smollm2_dir, smollm2_f16_gguf):
    from transformers import AutoTokenizer

    llm = _llama_vocab(smollm2_f16_gguf)
    meta = llm.metadata
    assert meta["tokenizer.ggml.model"] == "gpt2"
    assert meta["tokenizer.ggml.pre"] == "smollm"  # recognized, not 'default'
    assert int(meta["tokenizer.ggml.eos_token_id"]) == 2  # <|im_end|>
    assert "<|im_start|>" in meta["tokenizer.chat_template"]
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    strings = varied_strings(520, ["<|im_start|>", "<|im_end|>"], seed=1)
    bad = _mismatches(tokenizer, llm, strings)
    assert not bad, f"{len(bad)} differ, first: {bad[0]}"


@pytest.mark.slow
def test_tiny_llama3_tokenizer_and_gguf(tiny_llama3_dir, tiny_llama3_f16_gguf):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama3_dir)
    assert len(tokenizer) == 128256
    assert tokenizer.eos_token == "<|eot_id|>"
    assert tokenizer("hi")["input_ids"][0] == 128000  # Llama 3 adds BOS itself
    llm = _llama_vocab(tiny_llama3_f16_gguf)
    assert llm.metadata["tokenizer.ggml.pre"] == "llama-bpe"
    assert int(llm.metadata["tokenizer.ggml.eos_token_id"]) == 128009
    strings = varied_strings(520, ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"], seed=2)
    bad = _mismatches(tokenizer, llm, strings)
    assert not bad, f"{len(bad)} differ, first: {bad[0]}"


PROMPTS = [
    "Is the sentiment of this movie review positive or negative?\nReview: a gorgeous, witty film",
    "Is the sentiment of this movie review positive or negative?\nReview: dull and far too long",
    "Write one word that describes the sea.",
    "What is 2 + 2?",
    "Translate to French: good morning",
    "List three colors.",
    "Is this product review positive or negative?\nThe battery died after one day.",
    "Summarize: the cat sat on the mat and then went to sleep.",
]


@pytest.mark.slow
def test_smollm2_hf_and_f16_gguf_next_token_distributions_agree(smollm2_dir, smollm2_f16_gguf, capsys):
    """Mean KL and top-1 agreement of HF vs the converted f16 GGUF at the answer position."""
    import llama_cpp
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunegguf.scoring.logprobs import last_position_logprobs

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    texts = [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
        for p in PROMPTS
    ]
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    hf = last_position_logprobs(model, tokenizer, texts, batch_size=4)
    del model

    llm = llama_cpp.Llama(str(smollm2_f16_gguf), n_ctx=512, n_threads=2, verbose=False)
    cpp = []
    for text in texts:
        ids = llm.tokenize(text.encode(), add_bos=False, special=True)
        assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
        llm.reset()
        llm.eval(ids)
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1), shape=(llm.n_vocab(),))
        logits = logits.astype(np.float64)
        cpp.append(logits - np.log(np.exp(logits - logits.max()).sum()) - logits.max())
    cpp = np.stack(cpp)
    p = np.exp(hf.astype(np.float64))
    kl = (p * (hf - cpp)).sum(axis=1)
    top1 = float((hf.argmax(1) == cpp.argmax(1)).mean())
    with capsys.disabled():
        print(f"\n[parity] smollm2 HF vs f16 GGUF over {len(texts)} prompts: mean KL {kl.mean():.2e}, "
              f"max KL {kl.max():.2e}, top-1 agreement {top1:.0%}")
    assert kl.mean() < 1e-3
    assert top1 >= 0.875


def test_unknown_alias_is_a_one_line_error():
    from tunegguf.models import resolve_model

    with pytest.raises(TuneGGUFError, match="unknown model 'smollm2-135'.*did you mean 'smollm2-135m'"):
        resolve_model("smollm2-135")


def test_directory_that_is_not_a_model(tmp_path):
    from tunegguf.models import resolve_model

    with pytest.raises(TuneGGUFError, match="not a Hugging Face model directory"):
        resolve_model(str(tmp_path))
    gguf = tmp_path / "m.gguf"
    gguf.write_bytes(b"GGUF")
    with pytest.raises(TuneGGUFError, match="is a GGUF file"):
        resolve_model(str(gguf))


def test_corrupt_and_truncated_gguf_are_clean_errors(tmp_path):
    from tunegguf.models.gguf_tokenizer import read_gguf_fields, tokenizer_from_gguf
    from tunegguf.models.smollm2 import shipped_gguf

    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(TuneGGUFError, match="not a readable GGUF"):
        read_gguf_fields(junk, ["general.architecture"])
    truncated = tmp_path / "truncated.gguf"
    with open(shipped_gguf(), "rb") as f:
        truncated.write_bytes(f.read(200_000))
    with pytest.raises(TuneGGUFError, match="not a readable GGUF"):
        tokenizer_from_gguf(truncated)


def test_no_disk_for_cache_leaves_nothing_behind(tmp_path, monkeypatch):
    import shutil
    from collections import namedtuple

    from tunegguf.models import registry

    monkeypatch.setenv("TUNEGGUF_CACHE", str(tmp_path / "cache"))
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - 1000, 1000))
    with pytest.raises(TuneGGUFError, match="not enough disk"):
        registry.resolve_model("smollm2-135m")
    assert not any((tmp_path / "cache").rglob("config.json"))


def test_interrupted_build_leaves_no_half_written_entry(tmp_path, monkeypatch):
    from tunegguf.models import registry

    monkeypatch.setenv("TUNEGGUF_CACHE", str(tmp_path / "cache"))

    def failing_builder(target: Path) -> None:
        (target / "config.json").write_text("{}")
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "_load_builder", lambda spec: failing_builder)
    with pytest.raises(KeyboardInterrupt):
        registry.materialize("tiny-llama3")
    models = tmp_path / "cache" / "models"
    assert not (models / f"tiny-llama3-r{registry.RECIPE_VERSION}").exists()
    assert not any(models.iterdir())
