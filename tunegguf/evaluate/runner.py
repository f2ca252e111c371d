"""The evaluate stage: score the HF model, then each GGUF, one after another; compare; report.

`run` renders the prompts and builds the real backends; `evaluate_backends` does the rest
and only speaks the Backend protocol (tests drive it with fake backends).
"""

from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tunegguf.console import quiet_third_party
from tunegguf.data.clean import reference_answer
from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError, closest
from tunegguf.evaluate.backends import BackendOptions, BackendSpec, ModelKind
from tunegguf.evaluate.backends.kernels import resolve_extra_buffers
from tunegguf.evaluate.config import EvaluateConfig
from tunegguf.evaluate.lengths import PromptLimit, fit_to_limit, row_name
from tunegguf.evaluate.metrics import bootstrap_weights, model_metrics
from tunegguf.scoring.metrics import collapse_warning
from tunegguf.evaluate.result import ADAPTER_NAME, REFERENCE, EvaluateResult, ModelSpec, tokenizer_parity
from tunegguf.evaluate.parity import flipped_examples, prediction_parity, probability_parity, verdict
from tunegguf.evaluate.scoring import ModelScores, ReferenceLogprobs, score_model
from tunegguf.io import require_free_disk, require_path, scratch_dir
from tunegguf.models.adapter import require_adapter_dir
from tunegguf.prompts.config import PromptConfig
from tunegguf.prompts.verbalizer import UNPARSED

# ---- input checks ---------------------------------------------------------------------


def check_examples(examples: Sequence[Example], labels: Sequence[str]) -> list[Example]:
    """Every row must be a labelled classification row with a known label (one-line errors)."""
    if not labels:
        raise TuneGGUFError("no labels given; pass the class names in order, e.g. --labels negative,positive")
    if len(set(labels)) != len(labels):
        raise TuneGGUFError(f"the label list names a class twice: {list(labels)}")
    if not examples:
        raise TuneGGUFError("the split to evaluate has no rows")
    seen: set[str] = set()
    for index, example in enumerate(examples):
        where = row_name(index, example)
        if not example.is_classification:
            raise TuneGGUFError(f"{where}: has no text; evaluate scores classification rows only")
        if example.label is None:
            raise TuneGGUFError(f"{where}: has no label; every evaluated row needs one")
        if example.label not in labels:
            raise TuneGGUFError(
                f"{where}: label {example.label!r} is not one of {list(labels)}{closest(example.label, labels)}"
            )
        if example.id in seen:
            raise TuneGGUFError(f"{where}: the id is used twice; ids pair the predictions of the models")
        seen.add(example.id)
    return list(examples)


def select_gguf_files(gguf_files: dict[str, Path] | None, quants: Sequence[str]) -> dict[str, Path]:
    """The GGUF files to compare: all of them, or those named in evaluate.quants."""
    files = {str(k): Path(v) for k, v in (gguf_files or {}).items()}
    if REFERENCE in files:
        raise TuneGGUFError(f"a GGUF cannot be named {REFERENCE!r}: that name is the Transformers model")
    if quants:
        missing = [q for q in quants if q not in files]
        if missing:
            raise TuneGGUFError(
                f"evaluate.quants names {missing[0]!r}, which is not among the GGUF files "
                f"{sorted(files)}{closest(missing[0], files)}"
            )
        files = {q: files[q] for q in quants}
    for name, path in files.items():
        require_path(path, f"GGUF file for {name!r}", kind="file",
                     fix=f"give a .gguf file, or compare every GGUF in that directory with --gguf-dir {path}")
    return files


# ---- the stage ------------------------------------------------------------------------


def task_of(examples: Sequence[Example]) -> str:
    """"classification" when every row is a labelled text, "answers" when none is (instruction
    and chat rows: the reference is the answer text). A mix is an error naming the first odd row."""
    if not examples:
        raise TuneGGUFError("the split to evaluate has no rows")
    first_kind = examples[0].is_classification
    for index, example in enumerate(examples):
        if example.is_classification != first_kind:
            raise TuneGGUFError(
                f"{row_name(index, example)}: mixes {'a text' if example.is_classification else 'an answer'} row "
                f"into {'answer' if not first_kind else 'classification'} rows; evaluate one task per split"
            )
    return "classification" if first_kind else "answers"


def run(
    config: EvaluateConfig,
    *,
    prompt: PromptConfig,
    examples: Sequence[Example],
    labels: list[str],
    hf_model: str | Path,
    adapter_dir: Path | None = None,
    gguf_files: dict[str, Path] | None = None,
    out_dir: Path,
    extra_sections: dict | None = None,
    adapter_reference: tuple[str | Path, Path] | None = None,
    modelfiles: dict[str, Path] | None = None,
    weight_parity: dict[str, dict[str, Any]] | None = None,
    servers: dict[str, str] | None = None,
    checkable: bool = False,
) -> EvaluateResult:
    """Score the HF model (plus adapter) and each GGUF on `examples`; write the reports.

    The task follows the rows: labelled texts are scored as classification (label-token
    probabilities, greedy labels); instruction and chat rows as answers (teacher-forced
    log-probs on the reference answer and greedy answers, evaluate.answers).
    adapter_reference: (base model, LoRA adapter dir) scored unmerged before the HF model,
    so the report's stage table can blame "merge" separately from conversion/quantization.
    modelfiles: Ollama Modelfile per GGUF name (checked against the training prompt).
    weight_parity: the export manifest's weight-parity block per GGUF name (kept in
    report.json; the recommendation never picks a file that erases the fine-tune).
    servers: name -> URL of running OpenAI-compatible llama.cpp servers, scored like a GGUF
    (label log-probs from the server's top-k), so the report covers the server you deploy.
    checkable: answers only; the reference answers are exact (the demo's arithmetic, word
    reversal...), so exact match against them is reported.
    """
    quiet_third_party()
    labels = list(labels)
    task = task_of(examples)
    if task == "classification":
        examples = check_examples(examples, labels)[: config.limit]
    else:
        examples = check_answer_examples(examples)[: config.limit]
        labels = []
        if servers:
            raise TuneGGUFError("--server scores classification rows only; answers parity needs the GGUF files")
    files = select_gguf_files(gguf_files, config.quants)
    for adapter in (adapter_dir, adapter_reference[1] if adapter_reference else None):
        if adapter is not None:
            require_adapter_dir(adapter)

    # Heavy imports only once the inputs are known to be sound.
    from transformers import AutoTokenizer

    from tunegguf.models.registry import describe_hub_error, resolve_model
    from tunegguf.prompts.renderer import PromptRenderer, TemplateTokens
    from tunegguf.scoring.logprobs import encode_prompts

    resolved = resolve_model(str(hf_model))
    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.path)
    except OSError as exc:
        raise describe_hub_error(resolved.name, exc) from None
    renderer = PromptRenderer(prompt, TemplateTokens.from_hf_tokenizer(tokenizer), labels)
    rendered = [renderer.render(example) for example in examples]
    prompts = [r.prompt for r in rendered]
    if task == "answers":
        fitted = _fit_answers(config, examples, rendered, lambda texts: encode_prompts(tokenizer, texts))
    else:
        # Counted once, here: no model (the HF pass included) ever sees a row over the context.
        fitted = fit_to_limit(examples, prompts,
                              count=lambda texts: [len(ids) for ids in encode_prompts(tokenizer, texts)],
                              render=lambda example: renderer.render(example).prompt, limit=PromptLimit.of(config),
                              policy=config.too_long)
    examples, prompts = fitted.examples, fitted.prompts

    specs: list[BackendSpec] = []
    if adapter_reference is not None:
        base, ref_adapter = adapter_reference
        specs.append(BackendSpec(ModelKind.HF_ADAPTER, ADAPTER_NAME, base, adapter_dir=Path(ref_adapter)))
    specs.append(BackendSpec(ModelKind.HF, REFERENCE, resolved.path, adapter_dir=adapter_dir))
    specs += [BackendSpec(ModelKind.GGUF, name, path) for name, path in files.items()]
    if servers:
        # Servers do not report their vocabulary; the HF model's logits width is the one to match.
        config_json = Path(resolved.path) / "config.json"
        vocab = (json.loads(config_json.read_text()).get("vocab_size") if config_json.is_file() else None) or len(tokenizer)
        specs += [BackendSpec(ModelKind.GGUF, name, url=url, vocab_size=vocab) for name, url in servers.items()]
    # auto is decided here, once, by this host's kernel probe (cached): the worker takes a bool.
    extra_buffers = bool(files) and resolve_extra_buffers(config.llama_extra_buffers, config.n_threads)
    options = BackendOptions(device=config.device, batch_size=config.batch_size, n_ctx=config.n_ctx,
                             n_threads=config.n_threads, extra_buffers=extra_buffers)
    models = [ModelSpec.of(spec, options) for spec in specs]
    context = {"hf_model": resolved.path, "adapter_dir": str(adapter_dir) if adapter_dir else None, "prompt": prompt}
    if adapter_reference is not None:
        context["adapter_reference"] = [str(adapter_reference[0]), str(adapter_reference[1])]
    checks = None
    if config.template_checks and files:
        from tunegguf.evaluate.template_checks import template_checks_for_run

        checks = template_checks_for_run(resolved.path, files, modelfiles or {}, prompt, labels, examples[0])
    diagnostics = {"templates": checks, "weight_parity": weight_parity, "too_long": fitted.report}
    if task == "answers":
        from tunegguf.evaluate.answers.run import evaluate_answers

        return evaluate_answers(
            config, examples=examples, prompts=prompts, targets=fitted.targets, prompt_ids=fitted.prompt_ids,
            answer_ids=fitted.answer_ids, references=[reference_answer(e) for e in fitted.examples],
            models=models, out_dir=Path(out_dir), context=context,
            extra_sections=extra_sections, diagnostics=diagnostics, warnings=fitted.warnings,
            checkable=checkable, decode=lambda ids: tokenizer.decode(ids, skip_special_tokens=False),
        )
    return evaluate_backends(
        config,
        examples=examples,
        prompts=prompts,
        labels=labels,
        words=renderer.words,
        models=models,
        out_dir=Path(out_dir),
        extra_sections=extra_sections,
        context=context,
        diagnostics=diagnostics,
        warnings=fitted.warnings,
    )


def check_answer_examples(examples: Sequence[Example]) -> list[Example]:
    """Every answer row needs its reference answer and a unique id (one-line errors)."""
    seen: set[str] = set()
    for index, example in enumerate(examples):
        where = row_name(index, example)
        answer = reference_answer(example)
        if answer is None or not answer.strip():
            raise TuneGGUFError(f"{where}: has no reference answer (output or a last assistant turn); "
                                "every evaluated row needs one")
        if example.id in seen:
            raise TuneGGUFError(f"{where}: the id is used twice; ids pair the answers of the models")
        seen.add(example.id)
    return list(examples)


@dataclass
class FittedAnswers:
    """The answer rows every model scores, with the token ids all of them are fed."""

    examples: list[Example]
    prompts: list[str]
    targets: list[str]
    prompt_ids: list[list[int]]
    answer_ids: list[list[int]]
    report: dict[str, Any]
    warnings: list[str] = field(default_factory=list)


def _fit_answers(config: EvaluateConfig, examples: Sequence[Example], rendered: Sequence[Any],
                 encode: Callable[[Sequence[str]], list[list[int]]]) -> FittedAnswers:
    """Token ids of each prompt and reference answer, by the HF tokenizer, fed as they are to
    every runtime; rows over evaluate.n_ctx (prompt + the longer of the answer and
    evaluate.answers.max_new_tokens) are dropped or refused per evaluate.too_long."""
    prompts = [r.prompt for r in rendered]
    targets = [r.target for r in rendered]
    prompt_ids = encode(prompts)
    full_ids = encode([p + t for p, t in zip(prompts, targets)])
    budget = config.answers.max_new_tokens
    answer_ids, need = [], []
    for index, (example, p, full) in enumerate(zip(examples, prompt_ids, full_ids)):
        if full[: len(p)] != p or len(full) == len(p):
            raise TuneGGUFError(
                f"{row_name(index, example)}: the answer's first token merges with the end of the prompt, so the "
                "answer's tokens cannot be told apart; end the prompt template with a newline"
            )
        answer_ids.append(full[len(p):])
        need.append(len(p) + max(len(full) - len(p), budget))
    setting = f"evaluate.n_ctx={config.n_ctx} for prompt + answer (or evaluate.answers.max_new_tokens={budget})"
    over = [i for i, tokens in enumerate(need) if tokens > config.n_ctx]
    report: dict[str, Any] = {"limit": config.n_ctx, "setting": setting, "policy": config.too_long,
                              "dropped": [], "truncated": []}
    warnings: list[str] = []
    if over:
        first = over[0]
        if config.too_long != "drop":
            why = "" if config.too_long == "error" else " (truncate cannot cut an answer row; use drop)"
            raise TuneGGUFError(f"{row_name(first, examples[first])}: needs {need[first]:,} tokens, over {setting}"
                                f"{why}; raise evaluate.n_ctx, shorten the row, or set evaluate.too_long: drop")
        if len(over) == len(need):
            raise TuneGGUFError(f"all {len(need)} rows are over {setting}; raise evaluate.n_ctx")
        report["dropped"] = [{"id": examples[i].id, "row": i + 1, "tokens": need[i]} for i in over]
        ids = ", ".join(repr(examples[i].id) for i in over[:5]) + (", ..." if len(over) > 5 else "")
        warnings.append(f"{len(over)} of {len(need)} rows are over {setting} and were left out for every model: "
                        f"ids {ids}")
    keep = [i for i in range(len(need)) if i not in set(over)]
    return FittedAnswers(
        examples=[examples[i] for i in keep], prompts=[prompts[i] for i in keep], targets=[targets[i] for i in keep],
        prompt_ids=[prompt_ids[i] for i in keep], answer_ids=[answer_ids[i] for i in keep],
        report=report, warnings=warnings,
    )


def evaluate_backends(
    config: EvaluateConfig,
    *,
    examples: Sequence[Example],
    prompts: Sequence[str],
    labels: Sequence[str],
    words: Sequence[str],
    models: Sequence[ModelSpec],
    out_dir: Path,
    extra_sections: dict | None = None,
    context: dict[str, Any] | None = None,
    diagnostics: dict[str, Any] | None = None,
    warnings: Sequence[str] = (),
) -> EvaluateResult:
    """Score `models` in order (the first is the HF reference, optionally preceded by the
    unmerged HF_ADAPTER), compare, write the reports.

    diagnostics: optional {"templates": template_checks dict, "weight_parity": {name: block},
    "too_long": the rows `fit_to_limit` dropped or cut} copied into report.json.
    warnings: about the input (rows left out), listed first among the report's warnings.
    Every backend's token ids are held to the context limit (PromptLimit.of(config)): a
    prompt over it makes that model "could not run", naming the row.
    """
    from tunegguf.evaluate.stages import StageDivergence, stage_parents
    from tunegguf.evaluate.report import write_reports

    kinds = [spec.kind for spec in models]
    first = next((i for i, kind in enumerate(kinds) if kind != ModelKind.HF_ADAPTER), len(kinds))
    if not models or first >= len(kinds) or kinds[first] != ModelKind.HF or ModelKind.HF_ADAPTER in kinds[first:]:
        raise TuneGGUFError("the first model to evaluate must be the Transformers reference")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels, words = list(labels), list(words)
    n = len(prompts)
    # Named like the run's other temporaries: one a killed evaluation left is removed by the next.
    cleanup = contextlib.ExitStack()
    scratch = cleanup.enter_context(scratch_dir("reference-logprobs", near=out_dir))
    store: dict[str, ReferenceLogprobs] = {}

    def write_reference(start: int, rows: np.ndarray) -> None:
        if "ref" not in store:
            require_free_disk(out_dir, n * rows.shape[1] * 4, "the reference next-token log-probs")
            store["ref"] = ReferenceLogprobs(scratch / "hf.npy", n, rows.shape[1])
        store["ref"].write(start, rows)

    common = dict(
        prompts=list(prompts), labels=labels, words=words, modes=list(config.modes),
        batch_size=config.batch_size, max_new_tokens=config.max_new_tokens,
        prompt_limit=PromptLimit.of(config), row_names=[row_name(i, e) for i, e in enumerate(examples)],
    )
    parents = stage_parents([(spec.name, spec.kind, spec.file) for spec in models])
    stages = StageDivergence(scratch, n, parents,
                             reserve=lambda size: require_free_disk(out_dir, size, "a stage's next-token log-probs"))
    try:
        scored: list[ModelScores] = []
        # One model at a time: two runtimes computing at once would fight for the cores.
        for spec in models:
            opener = stages.wrap(spec.name, spec.open)
            scores = ModelScores(
                name=spec.name, kind=spec.kind, file=str(spec.file) if spec.file else None,
                size_bytes=spec.file.stat().st_size if spec.file else None,
            )
            if spec.kind == ModelKind.HF_ADAPTER:
                score_model(opener, scores, **common)
            elif spec.kind == ModelKind.HF:
                score_model(opener, scores, write_reference=write_reference, **common)
                if not scores.ok:
                    raise TuneGGUFError(f"the Transformers model could not be scored: {scores.error}")
            else:
                ref = store.get("ref")
                score_model(
                    opener, scores, **common,
                    read_reference=ref.read if ref else None,
                    reference_vocab=ref.vocab if ref else None,
                )
            scored.append(scores)
        stage_kl = {spec.name: stages.result(spec.name) for spec in models}
    finally:
        for ref in store.values():
            ref.close()
        stages.close()
        cleanup.close()

    report, predictions = build_report(config, examples, labels, words, scored, context or {}, extra_sections,
                                       stage_kl=stage_kl, diagnostics=diagnostics, warnings=warnings)
    paths = write_reports(out_dir, report, predictions)
    return EvaluateResult(
        out_dir=out_dir,
        report_json=paths["json"],
        report_md=paths["md"],
        report_html=paths["html"],
        predictions=paths["predictions"],
        verdicts=report["verdicts"],
        metrics={name: block.get("metrics", {}) for name, block in report["models"].items()},
        warnings=report["warnings"],
    )


# ---- report data ----------------------------------------------------------------------


def _mode_metrics(config: EvaluateConfig, scores: ModelScores, y_true: list[str], labels: list[str],
                  weights: np.ndarray) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if scores.pred_labels:
        m = model_metrics(y_true, scores.pred_labels, labels, probs=scores.probs, weights=weights,
                          collapse_threshold=config.collapse_threshold, ece_bins=config.ece_bins)
        m["mean_label_mass"] = float(np.mean(scores.label_mass))
        out["labels"] = m
    if scores.pred_generate:
        m = model_metrics(y_true, scores.pred_generate, labels, weights=weights,
                          collapse_threshold=config.collapse_threshold)
        m["stopped_at_eos_rate"] = float(np.mean(scores.stopped_at_eos))
        out["generate"] = m
    return out


def _gguf_parity(config: EvaluateConfig, examples: Sequence[Example], labels: list[str], ref: ModelScores,
                 other: ModelScores, weights: np.ndarray) -> dict[str, Any]:
    y_true = [e.label for e in examples]
    ids = [e.id for e in examples]
    block: dict[str, Any] = {"file": other.file, "size_bytes": other.size_bytes, "error": other.error}
    block["tokenizer"] = tokenizer_parity(examples, ref, other)
    if not other.ok:
        # Partial results of a model that failed half-way would read as a parity result.
        block["next_token"], block["modes"] = None, {}
        return block
    block["next_token"] = other.divergence
    if ref.probs is not None and other.probs is not None:
        block["label_probs"] = probability_parity(ref.probs, other.probs)
    modes: dict[str, Any] = {}
    for mode in config.modes:
        ref_pred, pred = ref.predictions(mode), other.predictions(mode)
        if not ref_pred or len(pred) != len(ref_pred):
            continue
        stats = prediction_parity(y_true, ref_pred, pred, weights)
        if mode == "labels":
            flips = flipped_examples(ids, y_true, ref_pred, pred, labels, ref.probs, other.probs)
        else:
            flips = flipped_examples(ids, y_true, ref_pred, pred, labels,
                                     ref_text=ref.generations, text=other.generations)
            stats["gguf_unparsed_rate"] = float(np.mean([p == UNPARSED for p in pred]))
            stats["hf_unparsed_rate"] = float(np.mean([p == UNPARSED for p in ref_pred]))
        if mode == "labels" and other.kl_per_row:
            kl = dict(zip(ids, other.kl_per_row))
            for row in flips:
                row["kl"] = round(kl[row["id"]], 6)
        stats["flips"] = flips
        modes[mode] = stats
    block["modes"] = modes
    return block


def build_report(
    config: EvaluateConfig,
    examples: Sequence[Example],
    labels: list[str],
    words: list[str],
    scored: Sequence[ModelScores],
    context: dict[str, Any],
    extra_sections: dict | None,
    stage_kl: dict[str, Any] | None = None,
    diagnostics: dict[str, Any] | None = None,
    warnings: Sequence[str] = (),
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """report.json's content and predictions.jsonl's rows, from the scored models."""
    from datetime import datetime, timezone

    from tunegguf import __version__
    from tunegguf.config.typed import to_dict

    y_true = [e.label for e in examples]
    weights = bootstrap_weights(len(examples), config.bootstrap, config.seed)
    ref = next(s for s in scored if s.kind == ModelKind.HF)
    models: dict[str, Any] = {}
    warnings = list(warnings)
    for scores in scored:
        block: dict[str, Any] = {
            "kind": scores.kind, "file": scores.file, "size_bytes": scores.size_bytes,
            "status": "ok" if scores.ok else "failed", "error": scores.error, "info": scores.info,
            "label_token_ids": scores.label_token_ids, "timing": scores.timing,
        }
        if scores.ok:
            block["metrics"] = _mode_metrics(config, scores, y_true, labels, weights)
            for mode, m in block["metrics"].items():
                warning = collapse_warning(m, f"{scores.name} ({mode})")
                if warning:
                    warnings.append(warning)
        models[scores.name] = block
    parity = {s.name: _gguf_parity(config, examples, labels, ref, s, weights) for s in scored if s.kind == ModelKind.GGUF}
    verdicts = {name: verdict(block, config) for name, block in parity.items()}
    primary = "labels" if "labels" in config.modes else "generate"
    from tunegguf.evaluate.stages import stage_table

    stages = stage_table(scored, y_true, weights, mode=primary, divergence=stage_kl)
    report = {
        "tunegguf_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "n_examples": len(examples),
        "labels": labels,
        "label_words": words,
        "modes": list(config.modes),
        "primary_mode": primary,
        "label_distribution": {label: y_true.count(label) for label in labels},
        "config": to_dict(config),
        "context": to_dict(context),
        "models": models,
        "parity": parity,
        "verdicts": verdicts,
        "warnings": warnings,
        "extra_sections": to_dict(extra_sections or {}),
        "stages": stages,
        "template_checks": (diagnostics or {}).get("templates"),
        "weight_parity": (diagnostics or {}).get("weight_parity"),
        "too_long": (diagnostics or {}).get("too_long"),
    }
    from tunegguf.evaluate.recommend import recommend

    report["recommendation"] = recommend(report).to_dict()
    return report, _prediction_rows(examples, labels, scored, primary)


def _prediction_rows(examples: Sequence[Example], labels: list[str], scored: Sequence[ModelScores],
                     primary: str) -> list[dict[str, Any]]:
    rows = []
    for scores in scored:
        if not scores.ok:
            continue
        for i, example in enumerate(examples):
            row: dict[str, Any] = {"model": scores.name, "id": example.id, "label": example.label}
            preds = scores.predictions(primary)
            row["pred"] = preds[i] if preds else None
            if scores.pred_labels:
                row["pred_labels"] = scores.pred_labels[i]
                row["probs"] = {label: round(float(p), 6) for label, p in zip(labels, scores.probs[i])}
                row["label_mass"] = round(float(scores.label_mass[i]), 6)
            if scores.kl_per_row:
                row["kl"] = round(scores.kl_per_row[i], 8)
            if scores.pred_generate:
                row["pred_generate"] = scores.pred_generate[i]
                row["generated"] = scores.generations[i]
                row["stopped_at_eos"] = scores.stopped_at_eos[i]
            rows.append(row)
    return rows
