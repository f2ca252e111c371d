"""The answers verbs (teacher_forced_logprobs, generate_ids) on the real backends: same ids,
same distributions at every answer position, the same greedy answers, clean failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.backends.base import TokenGeneration, split_answer_rows, top_ids

QUESTIONS = [
    "What is the capital of France? Answer with the city name only.",
    "Reverse the word 'planet'.",
    "Say hello.",
]
# Reference answers of 10+ tokens (not what the model would say: teacher forcing must hold
# for any answer), each ending at the end-of-turn token as the renderer's targets do.
ANSWERS = [
    "Paris is the capital of France, and it lies on the Seine.<|im_end|>",
    "The word 'planet' reversed is 'tenalp', read from the last letter.<|im_end|>",
]
BUDGET = 12


def kl_rows(p_log: np.ndarray, q_log: np.ndarray) -> np.ndarray:
    """KL(p‖q) per row, in float64."""
    p_log, q_log = p_log.astype(np.float64), q_log.astype(np.float64)
    return (np.exp(p_log) * (p_log - q_log)).sum(axis=-1)


def test_top_ids_is_the_stable_argsort_prefix():
    rng = np.random.default_rng(0)
    # Few distinct values, so ties cross the k-th rank often.
    for _ in range(200):
        x = rng.integers(0, 4, size=int(rng.integers(1, 30))).astype(np.float32)
        k = int(rng.integers(0, 8))
        assert top_ids(x, k) == [int(i) for i in np.argsort(-x, kind="stable")[:k]]
    x = np.array([1.0, 3.0, 3.0, 2.0])
    assert top_ids(x, 2) == [1, 2]
    assert top_ids(x, 1) == [int(np.argmax(x))]
    assert top_ids(x, 10) == [1, 2, 3, 0]


def test_server_backend_refuses_the_answers_verbs_in_one_line():
    from tunegguf.evaluate.backends.server import ServerBackend

    server = ServerBackend.__new__(ServerBackend)  # no server needed: the verbs never reach one
    server.base_url = "http://127.0.0.1:8080"
    for call in (lambda: server.teacher_forced_logprobs([[1, 2]], [[3]]), lambda: server.generate_ids([[1, 2]], 4)):
        expected = r"server backend.*answers parity needs the GGUF file; pass --gguf"
        with pytest.raises(TuneGGUFError, match=expected) as err:
            call()
        assert "\n" not in str(err.value)


def chat_ids(model_dir: Path) -> tuple[list[list[int]], list[list[int]], list[str], list[int]]:
    """Prompt ids of QUESTIONS, answer ids of ANSWERS (as the evaluator cuts them), prompt texts, stop ids."""
    from transformers import AutoTokenizer

    from tunegguf.scoring.logprobs import encode_prompts

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q}], tokenize=False,
                                             add_generation_prompt=True) for q in QUESTIONS]
    prompt_ids = encode_prompts(tokenizer, prompts)
    full = encode_prompts(tokenizer, [p + a for p, a in zip(prompts, ANSWERS)])
    answer_ids = []
    for p, f in zip(prompt_ids, full):
        assert f[: len(p)] == p
        answer_ids.append(f[len(p):])
    return prompt_ids, answer_ids, prompts, [tokenizer.convert_tokens_to_ids("<|im_end|>")]


@pytest.fixture(scope="module")
def hf_answers(smollm2_dir):
    """The HF side, computed once and freed: teacher-forced rows, greedy answers batched and
    one at a time, and the next-token rows of each prompt + answer[:j] prefix."""
    from tunegguf.evaluate.backends.hf import HFBackend
    from tunegguf.scoring.logprobs import last_position_logprobs

    prompt_ids, answer_ids, prompts, eot = chat_ids(smollm2_dir)
    backend = HFBackend(smollm2_dir, batch_size=3)
    try:
        # QUESTIONS has one prompt more than ANSWERS (a generation-only row): pair what pairs.
        forced = split_answer_rows(backend.teacher_forced_logprobs(prompt_ids[: len(answer_ids)], answer_ids),
                                   answer_ids)
        single = backend.teacher_forced_logprobs([prompt_ids[0]], [answer_ids[0]])
        prefixes = [backend.tokenizer.decode(prompt_ids[0] + answer_ids[0][:j], skip_special_tokens=False)
                    for j in range(len(answer_ids[0]))]
        assert backend.tokenize(prefixes) == [prompt_ids[0] + answer_ids[0][:j] for j in range(len(answer_ids[0]))]
        ref = {
            "prompt_ids": prompt_ids, "answer_ids": answer_ids, "prompts": prompts, "eot": eot,
            "stop_ids": backend.stop_ids, "forced": forced, "single": single, "prefixes": prefixes,
            "next_token": last_position_logprobs(backend.model, backend.tokenizer, prefixes, batch_size=1),
            "batched": backend.generate_ids(prompt_ids, BUDGET),
            "single_generations": [backend.generate_ids([ids], BUDGET)[0] for ids in prompt_ids],
        }
        with pytest.raises(TuneGGUFError, match=r"token id 49152, outside hf's vocabulary of 49152"):
            backend.teacher_forced_logprobs([prompt_ids[0]], [[49152]])
        ref["after_error"] = backend.teacher_forced_logprobs([prompt_ids[0]], [answer_ids[0]])
        # Longer than one llama.cpp batch (512 ids): its rows straddle the chunk boundary.
        ref["long_prompt"] = (prompt_ids[1] * 20)[: 512 - len(prompt_ids[0]) - 3] + prompt_ids[0]
        ref["long_forced"] = backend.teacher_forced_logprobs([ref["long_prompt"]], [answer_ids[0]])
    finally:
        backend.close()
    return ref


def check_contract(gen: TokenGeneration, stop_ids: list[int], budget: int, top_k: int = 5) -> None:
    assert all(len(tops) == top_k for tops in gen.top_ids)
    # Greedy: each step's token is that step's best id.
    assert [tops[0] for tops in gen.top_ids[: len(gen.ids)]] == gen.ids
    assert not set(gen.ids) & set(stop_ids)
    if gen.stopped:
        assert len(gen.top_ids) == len(gen.ids) + 1 and gen.top_ids[-1][0] in stop_ids
    else:
        assert len(gen.ids) == budget and len(gen.top_ids) == budget


@pytest.mark.slow
def test_hf_teacher_forcing_gives_each_prefixs_next_token_distribution(hf_answers):
    for forced, answer in zip(hf_answers["forced"], hf_answers["answer_ids"]):
        assert forced.shape == (len(answer), 49152) and forced.dtype == np.float32
        assert len(answer) >= 10
        assert np.allclose(np.exp(forced.astype(np.float64)).sum(axis=1), 1.0, atol=1e-4)
    # Row j is the distribution after prompt + answer[:j], not one position off.
    forced, stepwise = hf_answers["forced"][0], hf_answers["next_token"]
    np.testing.assert_allclose(forced, stepwise, atol=1e-4)
    assert kl_rows(forced[1:], stepwise[:-1]).min() > 0.05  # a shift would be seen
    # After a refused request the same one-pair request gives the same rows, bit for bit; in
    # a two-pair batch they may differ by rounding only (padding changes the matmul shapes).
    np.testing.assert_array_equal(hf_answers["after_error"], hf_answers["single"])
    np.testing.assert_allclose(hf_answers["single"], forced, atol=1e-4)


@pytest.mark.slow
def test_hf_batched_greedy_equals_one_at_a_time(hf_answers):
    lengths = [len(ids) for ids in hf_answers["prompt_ids"]]
    assert len(set(lengths)) == len(lengths)  # mixed lengths: left padding is exercised
    batched, single = hf_answers["batched"], hf_answers["single_generations"]
    assert [g.ids for g in batched] == [g.ids for g in single]
    assert [g.top_ids for g in batched] == [g.top_ids for g in single]
    assert [g.stopped for g in batched] == [g.stopped for g in single]
    assert [g.text for g in batched] == [g.text for g in single]
    for gen in batched:
        check_contract(gen, hf_answers["stop_ids"], BUDGET)
    # One answer ends at <|im_end|> inside the budget, one runs into it: both paths covered.
    assert {g.stopped for g in batched} == {True, False}
    assert batched[0].text == "The capital of France is Paris."


@pytest.mark.slow
def test_llamacpp_answers_match_transformers(hf_answers, smollm2_f16_gguf):
    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend

    prompt_ids, answer_ids = hf_answers["prompt_ids"], hf_answers["answer_ids"]
    with LlamaCppBackend(smollm2_f16_gguf, n_ctx=1024, n_threads=1) as gguf:
        forced = split_answer_rows(gguf.teacher_forced_logprobs(prompt_ids[: len(answer_ids)], answer_ids), answer_ids)
        single = gguf.teacher_forced_logprobs([prompt_ids[0]], [answer_ids[0]])
        generated = gguf.generate_ids(prompt_ids, BUDGET)
        stepwise = gguf.next_token_logprobs(hf_answers["prefixes"])

        # Garbage in: a clean one-line error, and the worker keeps answering the same.
        with pytest.raises(TuneGGUFError, match=r"token id 49152, outside this GGUF's vocabulary of 49152"):
            gguf.teacher_forced_logprobs([prompt_ids[0]], [[answer_ids[0][0], 49152]])
        with pytest.raises(TuneGGUFError, match=r"token id -1, outside"):
            gguf.generate_ids([[-1]], 2)
        too_long = (rf"a prompt of {len(prompt_ids[0])} tokens \+ an answer of {len(answer_ids[0]) * 100} "
                    r"does not fit n_ctx=1024")
        with pytest.raises(TuneGGUFError, match=too_long):
            gguf.teacher_forced_logprobs([prompt_ids[0]], [answer_ids[0] * 100])
        # The same one-pair request after the refusals: bit for bit what it gave before them
        # (the worker's cache was cleaned up); within the batched path's rounding of the pair
        # scored beside another (tests/test_llamacpp_batched.py states that bound).
        np.testing.assert_array_equal(gguf.teacher_forced_logprobs([prompt_ids[0]], [answer_ids[0]]), single)
        assert np.abs(single - forced[0]).max() < 0.1

        long_forced = gguf.teacher_forced_logprobs([hf_answers["long_prompt"]], [answer_ids[0]])

    for hf_rows, rows in zip(hf_answers["forced"], forced):
        assert rows.shape == hf_rows.shape and rows.dtype == np.float32
        assert kl_rows(hf_rows, rows).mean() < 1e-3
        assert (hf_rows.argmax(axis=1) == rows.argmax(axis=1)).mean() >= 0.9
    # The same rows as one next-token request per prefix. Not bitwise: llama.cpp's CPU
    # kernels round a 1-token batch and a whole-sequence batch differently (KL about 3e-5, the
    # size of the HF-vs-f16 gap), so the bookkeeping check is the gap to a shifted row.
    assert kl_rows(forced[0], stepwise).max() < 1e-4
    assert kl_rows(forced[0][1:], stepwise[:-1]).min() > 0.05

    # Greedy on the f16 file: the same answers as HF, contract for contract. "Say hello."
    # meets a near-tie at its second token ("Hello!" or "Hello,"), where rounding may pick
    # either: there, only vLLM's rule is asked for (each token in the other's top 5).
    same = 0
    for hf_gen, gen in zip(hf_answers["batched"], generated):
        check_contract(gen, hf_answers["stop_ids"], BUDGET)
        assert gen.top_ids[0][0] == hf_gen.top_ids[0][0]
        if gen.ids == hf_gen.ids:
            same += 1
            assert gen.stopped == hf_gen.stopped and gen.text == hf_gen.text
            continue
        at = next(i for i, (a, b) in enumerate(zip(gen.ids + [-1], hf_gen.ids + [-2])) if a != b)
        assert gen.top_ids[at][0] in hf_gen.top_ids[at] and hf_gen.top_ids[at][0] in gen.top_ids[at]
    assert same >= 2
    assert generated[0].text == "The capital of France is Paris." and generated[0].stopped

    assert long_forced.shape == hf_answers["long_forced"].shape
    assert kl_rows(hf_answers["long_forced"], long_forced).mean() < 1e-3


@pytest.mark.slow
def test_teacher_forcing_positions_are_exact_and_the_cache_stays_consistent(hf_answers, smollm2_f16_gguf):
    """On the one-at-a-time path (n_seq_max=1): where the batch shapes match, the rows are
    bitwise the next-token rows, and after a teacher-forced call the prefix-reusing _feed
    sees exactly the KV cache it expects. (The batched path's cache is checked in
    tests/test_llamacpp_batched.py.)"""
    from tunegguf.evaluate.backends.llamacpp_worker import LlamaWorker, _log_softmax

    prompt, answer = hf_answers["prompt_ids"][0], hf_answers["answer_ids"][0]
    worker = LlamaWorker(str(smollm2_f16_gguf), n_ctx=512, n_threads=1, n_seq_max=1)
    assert worker.info["batched"] is False
    try:
        worker.reuse_prefix = False
        whole = np.stack([_log_softmax(worker._feed(prompt + answer[:j])) for j in (0, 5, len(answer) - 1)])
        single = np.stack([worker.teacher_forced_logprobs([prompt + answer[:j]], [[answer[j]]])[0]
                           for j in (0, 5, len(answer) - 1)])
        np.testing.assert_array_equal(single, whole)

        worker.reuse_prefix = True
        evaluated: list[int] = []
        original_eval = worker.llm.eval
        worker.llm.eval = lambda tokens: (evaluated.append(len(tokens)), original_eval(tokens))[1]
        worker.teacher_forced_logprobs([prompt], [answer])
        after = _log_softmax(worker._feed(prompt + answer))  # reuses prompt + answer[:-1]
        assert evaluated == [1]
        worker.llm.reset()
        worker._feed(prompt + answer[:-1])
        fresh = _log_softmax(worker._feed(prompt + answer))
        np.testing.assert_array_equal(after, fresh)
    finally:
        worker.llm.close()
