"""The answers evaluation: score the HF model, then each GGUF, one after another, on the
same prompt and answer token ids; compare; report.

Mirrors runner.evaluate_backends (which the classification path keeps): the optional
unmerged HF_ADAPTER first, then the HF reference (it must succeed), then each GGUF.
`runner.run` renders and tokenizes; this module only speaks the Backend protocol.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tunegguf.data.clean import reference_answer
from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.answers.metrics import (
    TeacherForcedStats,
    chrf,
    compare_greedy,
    divergence_char,
    exact_match,
)
from tunegguf.evaluate.answers.parity import answers_parity, answers_stage_table, answers_verdict
from tunegguf.evaluate.answers.scoring import AnswerScores, answer_offsets, score_answers
from tunegguf.evaluate.backends import ModelKind
from tunegguf.evaluate.config import EvaluateConfig
from tunegguf.evaluate.lengths import row_name
from tunegguf.evaluate.metrics import bootstrap_weights
from tunegguf.evaluate.result import EvaluateResult, ModelSpec, tokenizer_parity
from tunegguf.evaluate.scoring import ReferenceLogprobs
from tunegguf.io import require_free_disk, scratch_dir

REFERENCE_STORE = "reference-answer-logprobs"
"""The scratch directory's name (beside the reports): one a killed run left is removed by the next."""


def reference_text(example: Example, target: str) -> str:
    """The answer generations are compared with: the row's own (`reference_answer`: a chat
    row's last assistant turn, an instruction row's output), else the rendered target."""
    answer = reference_answer(example)
    return answer if answer is not None else target


def _check_inputs(config, examples, prompts, targets, prompt_ids, answer_ids, references, models) -> None:
    sizes = {"examples": len(examples), "prompts": len(prompts), "targets": len(targets),
             "prompt_ids": len(prompt_ids), "answer_ids": len(answer_ids)}
    if references is not None:
        sizes["references"] = len(references)
    if len(set(sizes.values())) != 1:
        raise TuneGGUFError(f"the answers evaluation needs one of each per row; got {sizes}")
    if not examples:
        raise TuneGGUFError("the split to evaluate has no rows")
    seen: set[str] = set()
    for index, example in enumerate(examples):
        if example.id in seen:
            raise TuneGGUFError(f"{row_name(index, example)}: the id is used twice; ids pair the answers of the models")
        seen.add(example.id)
        if not prompt_ids[index]:
            raise TuneGGUFError(f"{row_name(index, example)}: the prompt has no tokens")
        # Every backend gets these ids as they are: one over the context would fail (or be
        # cut) differently in each runtime, so it is refused before any model runs.
        need = len(prompt_ids[index]) + max(len(answer_ids[index]), config.answers.max_new_tokens)
        if need > config.n_ctx:
            raise TuneGGUFError(
                f"{row_name(index, example)}: the prompt ({len(prompt_ids[index])} tokens) plus the longer of its "
                f"reference answer ({len(answer_ids[index])}) and evaluate.answers.max_new_tokens "
                f"({config.answers.max_new_tokens}) is over evaluate.n_ctx ({config.n_ctx}); raise n_ctx, or let "
                "evaluate.too_long drop the row")
    kinds = [spec.kind for spec in models]
    first = next((i for i, kind in enumerate(kinds) if kind != ModelKind.HF_ADAPTER), len(kinds))
    if not models or first >= len(kinds) or kinds[first] != ModelKind.HF or ModelKind.HF_ADAPTER in kinds[first:]:
        raise TuneGGUFError("the first model to evaluate must be the Transformers reference")


def evaluate_answers(
    config: EvaluateConfig,
    *,
    examples: Sequence[Example],
    prompts: Sequence[str],
    targets: Sequence[str],
    prompt_ids: Sequence[Sequence[int]],
    answer_ids: Sequence[Sequence[int]],
    models: Sequence[ModelSpec],
    out_dir: Path,
    decode: Callable[[list[int]], str] | None = None,
    references: Sequence[str] | None = None,
    context: dict[str, Any] | None = None,
    extra_sections: dict | None = None,
    diagnostics: dict[str, Any] | None = None,
    warnings: Sequence[str] = (),
    checkable: bool = False,
) -> EvaluateResult:
    """Score `models` in order on the answers, compare each GGUF with HF, write the reports.

    prompt_ids / answer_ids: the HF tokenizer's ids of each row's prompt and reference
    answer (its end-of-turn token included), fed as given to every backend.
    decode: the HF tokenizer's ids -> text (special tokens kept), for the character offset
    of each answer's first divergence; without it the offsets are null.
    references: the reference answers as text (default: `reference_text` of each row).
    checkable: the set's answers can be checked exactly (exact match and flips are
    reported; otherwise null, chrF only).
    diagnostics: {"templates", "weight_parity", "too_long"} copied into report.json.
    """
    from tunegguf.evaluate.report import write_reports
    from tunegguf.evaluate.stages import StageDivergence, stage_parents

    _check_inputs(config, examples, prompts, targets, prompt_ids, answer_ids, references, models)
    refs = list(references) if references is not None else [reference_text(e, t) for e, t in zip(examples, targets)]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    offsets = answer_offsets(answer_ids)
    total = offsets[-1]
    hf_name = next(spec.name for spec in models if spec.kind == ModelKind.HF)
    any_gguf = any(spec.kind == ModelKind.GGUF for spec in models)
    cleanup = contextlib.ExitStack()
    scratch = cleanup.enter_context(scratch_dir(REFERENCE_STORE, near=out_dir))
    store: dict[str, ReferenceLogprobs] = {}
    store_bytes = {"bytes": 0}

    def write_reference(start: int, rows: np.ndarray) -> None:
        if "ref" not in store:
            size = total * rows.shape[1] * 4
            require_free_disk(out_dir, size, "the reference answer log-probs")
            store["ref"] = ReferenceLogprobs(scratch / "hf-answers.npy", total, rows.shape[1])
            store_bytes["bytes"] = size
        store["ref"].write(start, rows)

    common = dict(prompts=list(prompts), prompt_ids=[list(p) for p in prompt_ids],
                  answer_ids=[list(a) for a in answer_ids], max_new_tokens=config.answers.max_new_tokens,
                  batch_size=config.batch_size)
    parents = stage_parents([(spec.name, spec.kind, spec.file) for spec in models])
    stages = StageDivergence(scratch, total, parents,
                             reserve=lambda size: require_free_disk(out_dir, size, "a stage's answer log-probs"),
                             verb="teacher_forced_logprobs", shared={hf_name: lambda: store.get("ref")})
    scored: list[AnswerScores] = []
    try:
        for spec in models:
            opener = stages.wrap(spec.name, spec.open)
            scores = AnswerScores(name=spec.name, kind=spec.kind, file=str(spec.file) if spec.file else None,
                                  size_bytes=spec.file.stat().st_size if spec.file else None)
            if spec.kind == ModelKind.HF:
                score_answers(opener, scores, write_reference=write_reference if any_gguf else None, **common)
                if not scores.ok:
                    raise TuneGGUFError(f"the Transformers model could not be scored: {scores.error}")
            elif spec.kind == ModelKind.GGUF:
                ref = store.get("ref")
                score_answers(opener, scores, read_reference=ref.read if ref else None,
                              reference_vocab=ref.vocab if ref else None, **common)
            else:
                score_answers(opener, scores, **common)
            scored.append(scores)
        stage_kl = {spec.name: stages.result(spec.name) for spec in models}
    finally:
        for ref in store.values():
            ref.close()
        stages.close()
        cleanup.close()

    report, predictions = build_answers_report(
        config, examples, prompts, refs, scored, context or {}, extra_sections, stage_kl=stage_kl,
        diagnostics=diagnostics, warnings=warnings, checkable=checkable, decode=decode,
        n_answer_tokens=total, store_bytes=store_bytes["bytes"], stage_bytes=stages.disk_bytes,
    )
    paths = write_reports(out_dir, report, predictions)
    return EvaluateResult(
        out_dir=out_dir, report_json=paths["json"], report_md=paths["md"], report_html=paths["html"],
        predictions=paths["predictions"], verdicts=report["verdicts"],
        metrics={name: {"answers": block["metrics"]} for name, block in report["models"].items() if "metrics" in block},
        warnings=report["warnings"],
    )


# ---- report data ----------------------------------------------------------------------


def _model_metrics(scores: AnswerScores, refs: Sequence[str], checkable: bool) -> dict[str, Any]:
    tokens = sum(scores.n_tokens)
    nll = sum(scores.nll) / tokens if tokens else None
    texts = [g.text for g in scores.generations]
    return {
        "nll_per_token": nll,
        "perplexity": float(np.exp(nll)) if nll is not None else None,
        "exact_match": float(np.mean([exact_match(t, r) for t, r in zip(texts, refs)])) if checkable else None,
        "chrf": float(np.mean([chrf(t, r) for t, r in zip(texts, refs)])) if texts else None,
        "stopped_at_eos_rate": float(np.mean([g.stopped for g in scores.generations])) if texts else None,
        "mean_answer_tokens": float(np.mean([len(g.ids) for g in scores.generations])) if texts else None,
    }


def _row_kl(scores: AnswerScores) -> tuple[list[float | None], list[float | None]]:
    tracker: TeacherForcedStats | None = scores.teacher_forced
    n = len(scores.nll)
    if tracker is None:
        return [None] * n, [None] * n
    return tracker.row_mean_kl(), tracker.row_max_kl()


def _round(x: float | None, digits: int = 6) -> float | None:
    return None if x is None else round(float(x), digits)


def build_answers_report(
    config: EvaluateConfig,
    examples: Sequence[Example],
    prompts: Sequence[str],
    refs: Sequence[str],
    scored: Sequence[AnswerScores],
    context: dict[str, Any],
    extra_sections: dict | None,
    *,
    stage_kl: dict[str, Any] | None = None,
    diagnostics: dict[str, Any] | None = None,
    warnings: Sequence[str] = (),
    checkable: bool = False,
    decode: Callable[[list[int]], str] | None = None,
    n_answer_tokens: int = 0,
    store_bytes: int = 0,
    stage_bytes: int = 0,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """report.json's content (task "answers") and predictions.jsonl's rows."""
    from datetime import datetime, timezone

    from tunegguf import __version__
    from tunegguf.config.typed import to_dict
    from tunegguf.evaluate.recommend import recommend

    weights = bootstrap_weights(len(examples), config.bootstrap, config.seed)
    ref = next(s for s in scored if s.kind == ModelKind.HF)
    warnings = list(warnings)
    models: dict[str, Any] = {}
    for scores in scored:
        block: dict[str, Any] = {"kind": scores.kind, "file": scores.file, "size_bytes": scores.size_bytes,
                                 "status": "ok" if scores.ok else "failed", "error": scores.error,
                                 "info": scores.info, "timing": scores.timing}
        if scores.ok:
            block["metrics"] = _model_metrics(scores, refs, checkable)
        models[scores.name] = block
    ggufs = [s for s in scored if s.kind == ModelKind.GGUF]
    answers = {s.name: answers_parity(ref, s, weights, tokenizer=tokenizer_parity(examples, ref, s),
                                      references=refs, checkable=checkable) for s in ggufs}
    verdicts = {name: answers_verdict(block, config) for name, block in answers.items()}
    if ref.ok and ref.generations and not any(g.stopped for g in ref.generations):
        warnings.append(f"the HF model stopped on none of the {len(ref.generations)} answers within "
                        f"evaluate.answers.max_new_tokens={config.answers.max_new_tokens}: raise the budget, "
                        "or check the chat template's end-of-turn token")
    examples_view, predictions = _rows(examples, prompts, refs, scored, ref, checkable, decode)
    report: dict[str, Any] = {
        "task": "answers",
        "tunegguf_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_examples": len(examples),
        "n_answer_tokens": int(n_answer_tokens),
        # bytes: the HF reference; stage_bytes: the stage table's parents (adapter, f16), on disk at once.
        "reference_store": {"kind": "memmap", "exact": True, "bytes": int(store_bytes),
                            "stage_bytes": int(stage_bytes)},
        "config": to_dict(config),
        "context": to_dict(context),
        "models": models,
        "answers": answers,
        "verdicts": verdicts,
        "warnings": warnings,
        "extra_sections": to_dict(extra_sections or {}),
        "stages": answers_stage_table(scored, weights, divergence=stage_kl, references=refs, checkable=checkable),
        "template_checks": (diagnostics or {}).get("templates"),
        "weight_parity": (diagnostics or {}).get("weight_parity"),
        "too_long": (diagnostics or {}).get("too_long"),
        "examples": examples_view,
    }
    report["recommendation"] = recommend(report).to_dict()
    return report, predictions


def _rows(examples, prompts, refs, scored, ref, checkable, decode):
    """The HTML view's per-example rows and predictions.jsonl's rows."""
    ok = [s for s in scored if s.ok]
    row_kl = {s.name: _row_kl(s) for s in ok}
    view: list[dict[str, Any]] = []
    predictions: list[dict[str, Any]] = []
    for i, example in enumerate(examples):
        answers: dict[str, Any] = {}
        for s in ok:
            gen = s.generations[i]
            first = char = None
            if s is not ref:
                pair = compare_greedy(ref.generations[i], gen)
                first = pair.first_divergence
                if first is not None and decode is not None:
                    char = divergence_char(decode(list(gen.ids[:first])), gen.text)
            mean_kl, max_kl = row_kl[s.name][0][i], row_kl[s.name][1][i]
            exact = exact_match(gen.text, refs[i]) if checkable else None
            score = chrf(gen.text, refs[i])
            answers[s.name] = {"text": gen.text, "stopped": gen.stopped, "n_tokens": len(gen.ids), "exact": exact,
                               "chrf": _round(score, 3), "first_divergence": first, "divergence_char": char,
                               "mean_kl": _round(mean_kl, 8), "max_kl": _round(max_kl, 8)}
            predictions.append({"model": s.name, "id": example.id, "generated": gen.text, "stopped": gen.stopped,
                                "exact": exact, "chrf": _round(score, 3), "mean_kl": _round(mean_kl, 8),
                                "max_kl": _round(max_kl, 8), "first_divergence": first,
                                "nll": _round(s.nll[i], 6), "n_answer_tokens": s.n_tokens[i]})
        view.append({"id": example.id, "prompt": prompts[i], "reference": refs[i], "answers": answers})
    return view, predictions


__all__ = ["build_answers_report", "evaluate_answers", "reference_text"]
