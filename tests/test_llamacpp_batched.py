"""The batched llama.cpp worker (many sequences per llama_decode, one unified KV cache, the
shared prefix decoded once) against the one-at-a-time path (n_seq_max=1): the same
predictions, log-probs within a stated bound, and a cache that stays right across
requests, small contexts and failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens

# Batched logits are not bit-identical to one-at-a-time ones: the CPU kernels round a
# 1-sequence batch and a many-sequence batch (other rows, other KV cell layout)
# differently. Measured here (24 mixed prompts, 2-core AMD EPYC, AVX2, 1 thread): SmolLM2-135M
# f16 max |Δ log-prob| 0.030 (labels) / 0.038 (teacher-forced) over the whole vocabulary,
# 0.008 / 0.014 over each row's 5 best tokens; tiny-llama3 f16 under 5e-5. (llama.cpp PR
# #26204 reports max 0.05.) A misplaced row or a wrong prefix moves log-probs by whole nats.
FULL_VOCAB_TOL = 0.1
"""max |Δ log-prob| over the whole vocabulary, batched vs n_seq_max=1."""
TOP_TOL = 0.05
"""max |Δ log-prob| of each row's 5 best tokens (what a label or a greedy step reads)."""

REVIEWS = [
    "Great.",
    "I loved this film, 10/10!",
    "Terrible. The battery died after 2 days 😡",
    "Not bad at all — the café's coffee was great.",
    "The plot was   dull and the acting wooden.\nAvoid.",
    "Mixed feelings: great visuals but a boring script that drags on for far too long, "
    "and an ending that nobody in the theatre understood.",
    "¡Qué maravilla! Best purchase of 2024.",
    "meh",
    "The film was great",
    "The film was great, but the sequel was not",
    "The film was dull",
    "A wonderful, warm and very funny story about a family that runs a small bakery.",
]
BUDGET = 8


def prompts_for(model_dir: Path) -> list[str]:
    """24 prompts of mixed lengths: 20 share the template prefix (several share more), 4
    share nothing with them."""
    from transformers import AutoTokenizer

    tokens = TemplateTokens.from_hf_tokenizer(AutoTokenizer.from_pretrained(model_dir))
    renderer = PromptRenderer(PromptConfig(), tokens, ["negative", "positive"])
    texts = REVIEWS + [f"{r} (copy {i})" for i, r in enumerate(REVIEWS[:8])]
    rendered = [renderer.render(Example(id=str(i), text=t, label="positive")).prompt for i, t in enumerate(texts)]
    return rendered + ["Hello", "Hello there, how are you today?", "1 2 3 4 5", "Once upon a time"]


def assert_close_rows(batched: np.ndarray, single: np.ndarray) -> float:
    """Same argmax, the top-5 log-probs and the full rows within the stated bounds; returns
    the max |Δ| (printed on failure)."""
    assert batched.shape == single.shape and batched.dtype == np.float32
    delta = np.abs(batched.astype(np.float64) - single)
    top = np.argsort(-single, axis=1, kind="stable")[:, :5]
    top_delta = np.take_along_axis(delta, top, axis=1).max()
    # A near-tie (top-2 gap under the bound) may flip argmax; outside one it may not.
    sorted_single = -np.sort(-single, axis=1)
    decided = (sorted_single[:, 0] - sorted_single[:, 1]) > TOP_TOL
    print(f"max |Δ| top-5 {top_delta:.4f}, full vocabulary {delta.max():.4f}")
    np.testing.assert_array_equal(batched.argmax(axis=1)[decided], single.argmax(axis=1)[decided])
    assert top_delta < TOP_TOL, top_delta
    assert delta.max() < FULL_VOCAB_TOL, delta.max()
    return float(delta.max())


def same_greedy(batched, single) -> None:
    """Greedy ids equal, or, from the first mismatch on, vLLM's rule: each path's token is in
    the other's top 5 there (a near-tie that rounding may tip)."""
    for b, s in zip(batched, single):
        b_ids, b_stop, b_tops, b_text = b
        s_ids, s_stop, s_tops, s_text = s
        if b_ids == s_ids:
            assert b_stop == s_stop and b_text == s_text
            assert [t[0] for t in b_tops] == [t[0] for t in s_tops]
            continue
        at = next(i for i, (x, y) in enumerate(zip(b_ids + [-1], s_ids + [-2])) if x != y)
        assert b_tops[at][0] in s_tops[at] and s_tops[at][0] in b_tops[at]


def pairs_for(worker, prompts: list[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Every prompt's ids with an answer of 0 to 9 tokens (an empty one has no row)."""
    answers = worker.tokenize(["Positive, I think: the review says it was great.", "Negative.", ""])
    prompt_ids = worker.tokenize(prompts)
    answer_ids = [answers[i % 3][: 9 - i % 4] for i in range(len(prompt_ids))]
    return prompt_ids, answer_ids


@pytest.fixture(scope="module", params=["smollm2", "tiny_llama3"])
def paths(request):
    """(model dir, its f16 GGUF, the one-at-a-time results, prompts), per model."""
    from tunegguf.evaluate.backends.llamacpp_worker import LlamaWorker

    model_dir = request.getfixturevalue(f"{request.param}_dir")
    gguf = request.getfixturevalue(f"{request.param}_f16_gguf")
    prompts = prompts_for(model_dir)
    single = LlamaWorker(str(gguf), n_ctx=1024, n_threads=1, n_seq_max=1)
    try:
        assert single.info["batched"] is False and single.info["n_seq_max"] == 1
        prompt_ids, answer_ids = pairs_for(single, prompts)
        ref = {
            "name": request.param, "gguf": gguf, "prompts": prompts, "prompt_ids": prompt_ids,
            "answer_ids": answer_ids,
            "labels": single.next_token_logprobs(prompts),
            "forced": single.teacher_forced_logprobs(prompt_ids, answer_ids),
            "greedy": single.generate_ids(prompt_ids, BUDGET),
        }
    finally:
        single.close()
    return ref


@pytest.fixture(scope="module")
def batched(paths):
    from tunegguf.evaluate.backends.llamacpp_worker import LlamaWorker

    worker = LlamaWorker(str(paths["gguf"]), n_ctx=1024, n_threads=1, n_seq_max=8)
    assert worker.info["batched"] is True and worker.info["n_seq_max"] == 8
    yield worker
    worker.close()


@pytest.mark.slow
def test_the_three_verbs_batched_match_one_at_a_time(paths, batched):
    prompts = paths["prompts"]
    decodes = []
    original = batched._decode
    batched._decode = lambda entries, on_row: (decodes.append(len({e[4] for e in entries})),
                                               original(entries, on_row))[1]
    try:
        labels = batched.next_token_logprobs(prompts)
    finally:
        batched._decode = original
    # 24 prompts in groups of at most 8 sequences: a few decodes, not 24.
    assert len(decodes) == 3 and max(decodes) >= 8
    worst = {"labels": assert_close_rows(labels, paths["labels"])}

    forced = batched.teacher_forced_logprobs(paths["prompt_ids"], paths["answer_ids"])
    assert forced.shape[0] == sum(len(a) for a in paths["answer_ids"]) and forced.shape[0] > 0
    worst["forced"] = assert_close_rows(forced, paths["forced"])

    greedy = batched.generate_ids(paths["prompt_ids"], BUDGET)
    for gen in greedy:
        ids, stopped, tops, _ = gen
        assert len(tops) == len(ids) + (1 if stopped else 0) and all(len(t) == 5 for t in tops)
        assert [t[0] for t in tops[: len(ids)]] == ids
        assert stopped or len(ids) == BUDGET
    same_greedy(greedy, paths["greedy"])
    assert sum(g[0] == s[0] for g, s in zip(greedy, paths["greedy"])) >= len(greedy) - 2
    print(paths["name"], "max |Δ log-prob| batched vs one-at-a-time:", worst)


@pytest.mark.slow
def test_consecutive_prefixes_and_a_failure_mid_request_leave_the_cache_right(paths, batched):
    """Requests with a shorter, a longer and no shared prefix one after the other give the
    rows of the one-at-a-time path; so does one after a decode failed halfway through."""
    from tunegguf.evaluate.backends.llamacpp_worker import LlamaWorker

    prompts, single = paths["prompts"], paths["labels"]
    # prompts[8:11] share the template and "The film was"; [:2] only the template; [8:10]
    # more than [:2] again; [20:22] nothing with the template; then template-sharing ones.
    requests = [[8, 9, 10], [0, 1], [8, 9], [20, 21], [9, 3]]
    for request in requests:
        rows = batched.next_token_logprobs([prompts[i] for i in request])
        assert_close_rows(rows, single[request])
        # A stale or misplaced prefix would be off by whole nats, not by rounding.
        assert np.abs(rows - single[request]).max() < 0.05

    lib = batched._lib
    calls = {"n": 0}
    real_decode = lib.llama_decode

    def failing(ctx, batch):
        calls["n"] += 1
        if calls["n"] == 2:
            raise RuntimeError("injected decode failure")
        return real_decode(ctx, batch)

    small = LlamaWorker(str(paths["gguf"]), n_ctx=256, n_threads=1, n_seq_max=4)
    try:
        lib.llama_decode = failing
        try:
            with pytest.raises(RuntimeError, match="injected"):
                small.next_token_logprobs(prompts[:8])  # two groups: the second decode fails
        finally:
            lib.llama_decode = real_decode
        assert calls["n"] == 2
        assert_close_rows(small.next_token_logprobs(prompts[:8]), single[:8])
    finally:
        small.close()


@pytest.mark.slow
def test_a_request_too_big_for_one_group_gives_the_same_rows(paths):
    """n_ctx=256 cells cannot hold 8 prompts + their budgets at once: the request is packed
    into several groups, and every row is the one-at-a-time row all the same; a prompt
    of n_ctx tokens alone still fits."""
    from tunegguf.evaluate.backends.llamacpp_worker import LlamaWorker

    prompt_ids = paths["prompt_ids"]
    worker = LlamaWorker(str(paths["gguf"]), n_ctx=256, n_threads=1, n_seq_max=8)
    try:
        assert worker.n_ctx == 256
        groups = worker._groups(prompt_ids, [len(p) - 1 for p in prompt_ids], reserve=BUDGET)
        assert sorted(i for g in groups for i in g) == list(range(len(prompt_ids)))
        assert len(groups) > 3  # 24 prompts in groups of 8 would be 3: the cells split them further
        assert_close_rows(worker.next_token_logprobs(paths["prompts"]), paths["labels"])
        longest = sorted(range(len(prompt_ids)), key=lambda i: -len(prompt_ids[i]))[:8]
        long_ids = [prompt_ids[i] for i in longest]
        assert len(worker._groups(long_ids, [len(p) - 1 for p in long_ids], reserve=BUDGET)) > 1
        same_greedy(worker.generate_ids(long_ids, BUDGET),
                    [paths["greedy"][i] for i in longest])
        whole = (prompt_ids[5] * 20)[:256]
        rows = worker.teacher_forced_logprobs([whole[:-1]], [whole[-1:]])
        last: list[np.ndarray] = []
        worker._batched([whole], [255], lambda j, pos, logits: last.append(logits.copy()))
        greedy = worker.generate_ids([whole[:-1]], 1)
        assert rows.shape == (1, worker.n_vocab) and len(last) == 1
        assert greedy[0][0] == [int(np.argmax(rows[0]))] or greedy[0][1]
        with pytest.raises(ValueError, match=r"a prompt of 257 tokens \(\+0 to generate\) does not fit n_ctx=256"):
            worker._check_prompt(whole + whole[:1])
        # Ids outside the vocabulary: the one-at-a-time path's one-line errors, nothing decoded.
        with pytest.raises(ValueError, match=rf"token id {worker.n_vocab}, outside this GGUF's vocabulary"):
            worker.teacher_forced_logprobs([prompt_ids[0]], [[worker.n_vocab]])
        with pytest.raises(ValueError, match=r"token id -1, outside"):
            worker.generate_ids([prompt_ids[0], [-1]], 2)
        assert_close_rows(worker.next_token_logprobs(paths["prompts"][:3]), paths["labels"][:3])
    finally:
        worker.close()


@pytest.mark.slow
def test_open_backend_passes_batch_size_as_n_seq_max(smollm2_f16_gguf):
    from tunegguf.evaluate.backends.factory import BackendOptions, BackendSpec, ModelKind, open_backend

    spec = BackendSpec(ModelKind.GGUF, "f16", smollm2_f16_gguf)
    for batch_size, batched in ((4, True), (1, False)):
        backend = open_backend(spec, BackendOptions(batch_size=batch_size, n_threads=1, n_ctx=512))
        try:
            assert backend.info["n_seq_max"] == batch_size and backend.info["batched"] is batched
            with pytest.raises(TuneGGUFError, match=r"token id -1, outside") as err:
                backend.generate_ids([[1, 2], [-1]], 2)
            assert "\n" not in str(err.value)
            assert backend.tokenize(["hello"]) == [[28120]]  # the worker keeps serving
        finally:
            backend.close()
