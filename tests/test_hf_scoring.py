"""The fast Transformers scorer (shared prefix KV, length-sorted batches, only the wanted
positions through the LM head) gives the rows of the plain full forward, in input order."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tunegguf.errors import TuneGGUFError

# fp32 CPU, measured: label and teacher-forced rows differ from the plain forwards by at
# most 5e-5 (SmolLM2, 96 demo prompts, full vocabulary; 2e-5 on the label tokens) and 2e-6
# (tiny-llama3).
# Float rounding of a different padding/batch split, never a different computation: a
# one-row shift, checked below, moves rows by far more.
TOL = 2e-4

REVIEWS = [
    "Great.", "I loved this film, 10/10!", "Terrible. The battery died after 2 days 😡",
    "Not bad at all — the café's coffee was great.", "The plot was   dull and the acting wooden.\nAvoid.",
    "Mixed feelings: great visuals but a boring script that goes on and on and on for three hours",
    "¡Qué maravilla! Best purchase of 2024.", "meh", "It works.",
    "A sequel nobody asked for, yet somehow better than the original in every way I can think of.",
    "Fine.", "The blender broke on the second day and support never answered my emails.",
]
ANSWER = " The review is positive, because the writer liked it a lot."


def render(model_dir: Path, texts: list[str]) -> list[str]:
    from transformers import AutoTokenizer

    from tunegguf.data.example import Example
    from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens

    tokens = TemplateTokens.from_hf_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    renderer = PromptRenderer(PromptConfig(), tokens, ["negative", "positive"])
    return [renderer.render(Example(id=str(i), text=t, label="positive")).prompt for i, t in enumerate(texts)]


@pytest.fixture(scope="module", params=["smollm2_dir", "tiny_llama3_dir"])
def scored(request):
    """Per model: new and reference rows for label scoring and teacher forcing, computed
    once and the model freed."""
    from tunegguf.evaluate.backends.hf import HFBackend
    from tunegguf.scoring.logprobs import (
        ScoringPlan,
        common_prefix_length,
        last_position_logprobs,
        left_padded_logprobs,
    )

    model_dir = request.getfixturevalue(request.param)
    # SmolLM2 is the slower model: fewer prompts (batches of 3 and 3) to keep the file's time
    # down; tiny-llama3 gets all 12 (batches of 5, 5, 2) and the extra checks.
    small = request.param == "smollm2_dir"
    prompts = render(model_dir, REVIEWS[:6] if small else REVIEWS)
    batch = 3 if small else 5
    backend = HFBackend(model_dir, batch_size=batch)
    try:
        ids = backend.tokenize(prompts)
        plan = ScoringPlan.of(backend.model)
        label_ids = [backend.tokenizer.encode(w, add_special_tokens=False)[0] for w in ("negative", "positive")]
        answer = backend.tokenize([ANSWER])[0]
        # Mixed pairs: an empty answer, a prompt that stops one token after the shared
        # prefix (so the prefix is cut back to end before its first answer position), and
        # one-token answers.
        prefix = common_prefix_length(ids)
        prompt_ids = [ids[0][: prefix + 1], ids[1], ids[2], ids[3], ids[5]]
        answer_ids = [answer, answer[:3], [], answer[:1], answer[5:]]
        if not small:
            prompt_ids, answer_ids = prompt_ids + ids[4:7], answer_ids + [answer, answer, answer[:1]]
        ref = {
            "ids": ids, "plan": plan, "label_ids": label_ids, "prompt_ids": prompt_ids, "answer_ids": answer_ids,
            "new": backend.next_token_logprobs(prompts),
            "old": left_padded_logprobs(backend.model, backend.tokenizer, prompts, batch_size=batch),
            "forced": backend.teacher_forced_logprobs(prompt_ids, answer_ids),
            "forced_old": np.concatenate([backend._teacher_forced_one(p, a) for p, a in zip(prompt_ids, answer_ids)]),
            "vocab": backend.info["vocab_size"],
        }
        if not small:
            ref["labels"] = last_position_logprobs(backend.model, backend.tokenizer, prompts, 5, keep_ids=label_ids)
            ref["one_batch"] = last_position_logprobs(backend.model, backend.tokenizer, prompts[::-1], 64)[::-1]
        with pytest.raises(TuneGGUFError, match="an empty prompt has no answer position"):
            backend.teacher_forced_logprobs([ids[0], []], [answer, answer])
        with pytest.raises(TuneGGUFError, match="got 2 prompts and 1 answers"):
            backend.teacher_forced_logprobs(ids[:2], [answer])
    finally:
        backend.close()
    return ref


@pytest.mark.slow
def test_label_rows_equal_the_left_padded_forward(scored):
    ids, new, old = scored["ids"], scored["new"], scored["old"]
    plan = scored["plan"]
    assert plan.fast and plan.prefix and plan.body is not None  # the path under test ran
    assert len({len(x) for x in ids}) >= 4  # mixed lengths: the sort reorders the batches
    assert new.shape == old.shape == (len(ids), scored["vocab"]) and new.dtype == np.float32
    assert (new.argmax(axis=1) == old.argmax(axis=1)).all()
    assert np.abs(new - old).max() < TOL
    # Input order kept: a row against its neighbour's is far off (even on the random model,
    # whose rows are nearly uniform).
    assert np.abs(new[1:] - old[:-1]).max() > 50 * TOL
    if "labels" in scored:
        # The label columns are exactly those of the full rows; batch composition and
        # input order change nothing beyond rounding.
        np.testing.assert_array_equal(scored["labels"], new[:, scored["label_ids"]])
        assert np.abs(scored["one_batch"] - new).max() < TOL


@pytest.mark.slow
def test_teacher_forced_rows_equal_one_forward_per_pair(scored):
    forced, forced_old, answers = scored["forced"], scored["forced_old"], scored["answer_ids"]
    assert forced.shape == forced_old.shape == (sum(map(len, answers)), scored["vocab"])
    assert (forced.argmax(axis=1) == forced_old.argmax(axis=1)).all()
    assert np.abs(forced - forced_old).max() < TOL
    assert np.abs(forced[1:] - forced_old[:-1]).max() > 50 * TOL


@pytest.fixture(scope="module")
def tiny(tiny_llama3_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_llama3_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_llama3_dir, dtype=torch.float32).eval()
    return model, tokenizer, render(tiny_llama3_dir, REVIEWS[:7])


@pytest.mark.slow
def test_every_fallback_gives_the_same_rows(tiny, monkeypatch):
    """Without the head gather (the model's own forward with logits_to_keep), without the
    prefix cache, and the left-padded path itself: the same rows."""
    from tunegguf.scoring import logprobs
    from tunegguf.scoring.logprobs import ScoringPlan, last_position_logprobs, left_padded_logprobs

    model, tokenizer, prompts = tiny
    fast = last_position_logprobs(model, tokenizer, prompts, batch_size=3)
    reference = left_padded_logprobs(model, tokenizer, prompts, batch_size=3)
    assert np.abs(fast - reference).max() < TOL
    monkeypatch.setattr(logprobs, "PLAIN_HEAD_TYPES", frozenset())
    assert ScoringPlan.of(model).body is None
    generic = last_position_logprobs(model, tokenizer, prompts, batch_size=3)
    monkeypatch.setattr(logprobs, "MIN_PREFIX", 10**6)
    no_prefix = last_position_logprobs(model, tokenizer, prompts, batch_size=3)
    for rows in (generic, no_prefix):
        assert (rows.argmax(axis=1) == reference.argmax(axis=1)).all()
        assert np.abs(rows - reference).max() < TOL


@pytest.mark.slow
def test_a_peft_model_is_scored_with_its_adapter_and_left_in_training_mode(tiny):
    import torch
    from peft import LoraConfig, get_peft_model

    from tunegguf.scoring.logprobs import ScoringPlan, last_position_logprobs, left_padded_logprobs

    model, tokenizer, prompts = tiny
    base_rows = last_position_logprobs(model, tokenizer, prompts, batch_size=4)
    torch.manual_seed(0)
    # init_lora_weights=False: B is random too, so the adapter really changes the outputs.
    peft_model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    try:
        plan = ScoringPlan.of(peft_model)
        assert plan.fast and plan.prefix and plan.model is peft_model.get_base_model()
        peft_model.train()  # as the fine-tune's validation finds it
        tuned = last_position_logprobs(peft_model, tokenizer, prompts, batch_size=4)
        assert peft_model.training
        reference = left_padded_logprobs(peft_model, tokenizer, prompts, batch_size=4)
        assert np.abs(tuned - reference).max() < TOL
        assert np.abs(tuned - base_rows).max() > 1e-3  # the LoRA layers ran
    finally:
        peft_model.unload()  # the module-scoped base model goes back as it was
        model.eval()


def test_models_the_fast_path_cannot_drive_use_the_plain_path():
    from tunegguf.scoring.logprobs import ScoringPlan, position_logprobs

    class NoKeep:  # a forward without logits_to_keep
        config = SimpleNamespace(model_type="llama", vocab_size=10)

        def forward(self, input_ids, attention_mask=None):
            raise AssertionError("not called")

    prompt_learning = SimpleNamespace(active_peft_config=SimpleNamespace(is_prompt_learning=True))
    assert not ScoringPlan.of(NoKeep()).fast and not ScoringPlan.of(prompt_learning).fast
    with pytest.raises(ValueError, match="logits_to_keep"):
        position_logprobs(NoKeep(), [[1, 2]], [[1]], 4, 0)


def test_bad_positions_and_empty_prompts_are_one_line_errors(tiny):
    from tunegguf.scoring.logprobs import last_position_logprobs, position_logprobs

    model, tokenizer, _ = tiny
    with pytest.raises(ValueError, match="position 3 is outside a sequence of 3 tokens"):
        position_logprobs(model, [[1, 2, 3]], [[3]], 4, 0)
    with pytest.raises(TuneGGUFError, match="an empty prompt has no last position"):
        last_position_logprobs(model, tokenizer, ["<|begin_of_text|>x", ""])
    assert position_logprobs(model, [[1, 2]], [[]], 4, 0).shape == (0, model.config.vocab_size)


@pytest.mark.slow
def test_generation_batches_are_length_sorted_and_results_in_input_order(tiny_llama3_dir):
    from tunegguf.evaluate.backends.hf import HFBackend

    backend = HFBackend(tiny_llama3_dir, batch_size=2)
    try:
        # Lengths 3rd > 1st > 2nd: the sorted batches are (3rd, 1st) and (2nd).
        rows = backend.tokenize(render(tiny_llama3_dir, [REVIEWS[1], REVIEWS[0], REVIEWS[2]]))
        batched = backend.generate_ids(rows, 3)
        single = [backend.generate_ids([ids], 3)[0] for ids in rows]
    finally:
        backend.close()
    assert len(rows[2]) > len(rows[0]) > len(rows[1])
    assert [g.ids for g in batched] == [g.ids for g in single]
    assert [g.top_ids for g in batched] == [g.top_ids for g in single]
    assert len({tuple(g.ids) for g in single}) > 1  # distinct rows: a reordering would show
