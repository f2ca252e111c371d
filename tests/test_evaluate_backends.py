"""The two real backends side by side: same ids, same next-token distribution, clean failures."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import numpy as np
import pytest

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.backends.base import Backend
from tunegguf.evaluate.parity import NextTokenDivergence
from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens, label_token_ids

LABELS = ["negative", "positive"]
# Digits, unicode, emoji, odd whitespace and a newline: where tokenizers tend to disagree.
TEXTS = [
    "I loved this film, 10/10!",
    "Terrible. The battery died after 2 days 😡",
    "Not bad at all — the café's coffee was great.",
    "The plot was   dull and the acting wooden.\nAvoid.",
    "Mixed feelings: great visuals but a boring script",
    "¡Qué maravilla! Best purchase of 2024.",
]


def render(model_dir: Path, texts=TEXTS) -> list[str]:
    from transformers import AutoTokenizer

    tokens = TemplateTokens.from_hf_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    renderer = PromptRenderer(PromptConfig(), tokens, LABELS)
    return [renderer.render(Example(id=str(i), text=t, label="positive")).prompt for i, t in enumerate(texts)]


@pytest.fixture(scope="module")
def hf_reference(smollm2_dir):
    """HF ids, label ids, full log-probs and greedy answers, computed once and freed."""
    from tunegguf.evaluate.backends.hf import HFBackend

    prompts = render(smollm2_dir)
    backend = HFBackend(smollm2_dir, batch_size=8)
    assert isinstance(backend, Backend)
    assert backend.info["device"] == "cpu" and backend.info["dtype"] == "float32"
    ref = {
        "prompts": prompts,
        "ids": backend.tokenize(prompts),
        "labels": label_token_ids(lambda t: backend.tokenize([t])[0], prompts[0], LABELS),
        "logprobs": backend.next_token_logprobs(prompts),
        "answers": backend.generate(prompts[:3], 4),
    }
    backend.close()
    return ref


@pytest.mark.slow
def test_llamacpp_f16_matches_transformers(hf_reference, smollm2_f16_gguf):
    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend

    prompts = hf_reference["prompts"]
    with LlamaCppBackend(smollm2_f16_gguf) as gguf:
        assert isinstance(gguf, Backend)
        ids = gguf.tokenize(prompts)
        labels = label_token_ids(lambda t: gguf.tokenize([t])[0], prompts[0], LABELS)
        logprobs = gguf.next_token_logprobs(prompts)
        answers = gguf.generate(prompts[:3], 4)
    assert ids == hf_reference["ids"]
    assert labels == hf_reference["labels"]
    assert logprobs.shape == hf_reference["logprobs"].shape
    assert np.allclose(np.exp(logprobs).sum(axis=1), 1.0, atol=1e-4)
    div = NextTokenDivergence()
    div.update(hf_reference["logprobs"], logprobs)
    result = div.result()
    assert result["mean_kl"] < 0.01
    assert result["top1_agreement"] >= 5 / 6
    # Answers: the same words, and both stop at <|im_end|> within 4 tokens.
    assert answers == hf_reference["answers"]
    assert all(stopped for _, stopped in answers)


@pytest.mark.slow
def test_tiny_llama3_ids_match_with_bos_in_the_template(tiny_llama3_dir, tiny_llama3_f16_gguf):
    from tunegguf.evaluate.backends.hf import HFBackend
    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend

    prompts = render(tiny_llama3_dir, TEXTS[:3])
    hf = HFBackend(tiny_llama3_dir)
    hf_ids, hf_lp = hf.tokenize(prompts), hf.next_token_logprobs(prompts)
    assert 128009 in hf.stop_ids  # <|eot_id|>
    hf.close()
    with LlamaCppBackend(tiny_llama3_f16_gguf) as gguf:
        ids, lp = gguf.tokenize(prompts), gguf.next_token_logprobs(prompts)
    assert ids == hf_ids
    assert all(seq[0] == 128000 and seq.count(128000) == 1 for seq in ids)  # BOS once, from the template
    div = NextTokenDivergence()
    div.update(hf_lp, lp)
    assert div.result()["mean_kl"] < 0.01


@pytest.mark.slow
def test_prefix_cache_gives_identical_logits(smollm2_dir, smollm2_f16_gguf):
    """Keeping the shared prefix in the KV cache must not change a single logit."""
    from tunegguf.evaluate.backends.llamacpp_worker import LlamaWorker

    prompts = render(smollm2_dir, TEXTS[:4])
    worker = LlamaWorker(str(smollm2_f16_gguf), n_ctx=512, n_threads=1)
    evaluated: list[int] = []
    original_eval = worker.llm.eval
    worker.llm.eval = lambda tokens: (evaluated.append(len(tokens)), original_eval(tokens))[1]
    cached = worker.next_token_logprobs(prompts)
    full_lengths = [len(ids) for ids in worker.tokenize(prompts)]
    # Only the first prompt is evaluated whole; the others reuse the template prefix.
    assert evaluated[0] == full_lengths[0]
    assert all(n < full for n, full in zip(evaluated[1:], full_lengths[1:]))
    worker.reuse_prefix = False
    fresh = np.stack([worker.next_token_logprobs([p])[0] for p in prompts])
    assert evaluated[-1] == full_lengths[-1]
    np.testing.assert_array_equal(cached, fresh)


@pytest.mark.slow
def test_prompt_longer_than_context_is_a_clean_error(smollm2_dir, smollm2_f16_gguf):
    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend

    prompts = render(smollm2_dir, ["word " * 400])
    # llama.cpp rounds a small context up to 256 tokens; the prompt is longer than that.
    with LlamaCppBackend(smollm2_f16_gguf, n_ctx=256, n_threads=1) as gguf:
        assert gguf.info["n_ctx"] == 256
        expected = r"a prompt of \d+ tokens .* does not fit n_ctx=256; raise evaluate.n_ctx"
        with pytest.raises(TuneGGUFError, match=expected):
            gguf.next_token_logprobs(prompts)
        # The worker survives a request error and keeps answering.
        assert gguf.tokenize(["hello"]) == [[28120]]


@pytest.mark.slow
@pytest.mark.parametrize("damage", ["truncated", "random"])
def test_corrupt_gguf_is_a_clean_error_and_the_caller_survives(tmp_path, smollm2_f16_gguf, damage):
    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend

    bad = tmp_path / f"{damage}.gguf"
    if damage == "truncated":
        with smollm2_f16_gguf.open("rb") as f:
            bad.write_bytes(f.read(smollm2_f16_gguf.stat().st_size // 3))
    else:
        bad.write_bytes(np.random.default_rng(0).bytes(1 << 16))
    with pytest.raises(TuneGGUFError) as info:
        LlamaCppBackend(bad, n_threads=1)
    message = str(info.value)
    assert str(bad) in message and "\n" not in message
    assert "cannot load" in message or "crashed" in message
    assert os.getpid() > 0  # still here
    with LlamaCppBackend(smollm2_f16_gguf, n_threads=1) as good:  # and llama.cpp still works
        assert good.tokenize(["hi"]) == [[6004]]


@pytest.mark.slow
@pytest.mark.parametrize(("sig", "number"), [(signal.SIGSEGV, 11), (signal.SIGABRT, 6)])
def test_worker_crash_becomes_an_error(smollm2_f16_gguf, sig, number):
    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend

    gguf = LlamaCppBackend(smollm2_f16_gguf, n_threads=1)
    os.kill(gguf.pid, sig)
    with pytest.raises(TuneGGUFError, match=rf"llama.cpp crashed on .*smollm2-f16.gguf \(signal {number}\)"):
        gguf.next_token_logprobs(["<|im_start|>user\nhi<|im_end|>\n"])
    with pytest.raises(TuneGGUFError, match="is closed"):
        gguf.tokenize(["hi"])
    gguf.close()  # idempotent


def test_missing_gguf_is_a_clean_error(tmp_path):
    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend

    with pytest.raises(TuneGGUFError, match="GGUF file not found"):
        LlamaCppBackend(tmp_path / "nope.gguf")


def test_open_backend_picks_the_runtime_the_spec_names(tmp_path):
    import json
    import socket

    from tunegguf.evaluate.backends import BackendOptions, BackendSpec, ModelKind, open_backend
    from tunegguf.evaluate.runner import ModelSpec

    assert [k.value for k in ModelKind] == ["hf", "hf_adapter", "gguf"]
    assert ModelKind.GGUF == "gguf" and f"{ModelKind.HF_ADAPTER}" == "hf_adapter" and json.dumps(ModelKind.HF) == '"hf"'
    gguf = BackendSpec(ModelKind.GGUF, "Q8_0", tmp_path / "nope.gguf")
    assert gguf.file == tmp_path / "nope.gguf"
    with pytest.raises(TuneGGUFError, match="GGUF file not found"):
        open_backend(gguf)
    # A ModelSpec only describes the model: the backend opens when it is scored.
    model = ModelSpec.of(gguf, BackendOptions(n_threads=1))
    assert (model.name, model.kind, model.file) == ("Q8_0", ModelKind.GGUF, gguf.file)
    with pytest.raises(TuneGGUFError, match="GGUF file not found"):
        model.open()
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    served = BackendSpec(ModelKind.GGUF, "served", url=f"http://127.0.0.1:{port}", vocab_size=10)
    assert served.file is None
    with pytest.raises(TuneGGUFError, match="cannot reach the server"):
        open_backend(served)
    with pytest.raises(ValueError, match="needs adapter_dir"):
        BackendSpec(ModelKind.HF_ADAPTER, "hf+adapter", "tiny-llama3")


def test_a_directory_without_adapter_config_fails_before_any_model_loads(tmp_path):
    from tunegguf.evaluate import EvaluateConfig, run
    from tunegguf.models.adapter import require_adapter_dir

    message = rf"^{tmp_path} is not a LoRA adapter directory \(no adapter_config.json\)$"
    with pytest.raises(TuneGGUFError, match=message):
        require_adapter_dir(tmp_path)
    examples = [Example(id="a", text="fine", label="positive")]
    # The model name resolves to nothing: the adapter check must come first.
    for adapter in ({"adapter_dir": tmp_path}, {"adapter_reference": ("no-such-model", tmp_path)}):
        with pytest.raises(TuneGGUFError, match=message):
            run(EvaluateConfig(), prompt=PromptConfig(), examples=examples, labels=LABELS, hf_model="no-such-model",
                out_dir=tmp_path / "out", **adapter)
    assert not (tmp_path / "out").exists()


def _random_adapter(model_dir: Path, out: Path, seed: int = 0) -> Path:
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    # init_lora_weights=False: B is random too, so the adapter really changes the outputs.
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    peft_model.save_pretrained(out)
    return out


@pytest.mark.slow
def test_hf_backend_applies_an_adapter(tmp_path, tiny_llama3_dir, smollm2_dir):
    from tunegguf.evaluate.backends.hf import HFBackend

    prompts = render(tiny_llama3_dir, TEXTS[:2])
    adapter = _random_adapter(tiny_llama3_dir, tmp_path / "adapter")
    base = HFBackend(tiny_llama3_dir)
    tuned = HFBackend(tiny_llama3_dir, adapter)
    assert tuned.info["adapter"] == str(adapter)
    base_lp, tuned_lp = base.next_token_logprobs(prompts), tuned.next_token_logprobs(prompts)
    assert not np.allclose(base_lp, tuned_lp, atol=1e-4)
    with pytest.raises(TuneGGUFError, match="does not fit this base model"):
        HFBackend(smollm2_dir, adapter)
    with pytest.raises(TuneGGUFError, match="not a LoRA adapter directory"):
        HFBackend(tiny_llama3_dir, tmp_path)
