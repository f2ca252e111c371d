"""report.md: the summary one pastes into a model card (tables only, no images)."""

from __future__ import annotations

from typing import Any

from tunegguf.evaluate.report.tables import (
    Table,
    confusion_table,
    flips_table,
    fmt,
    imatrix_table,
    megabytes,
    parity_table,
    pct,
    recall_table,
    recommendation_table,
    stages_table,
    template_checks_table,
    weight_parity_table,
    section_tables,
    speed_table,
    summary_table,
    answers_speed_table,
    answers_table,
    answers_thresholds,
    first_divergence_table,
    is_answers,
    kl_by_position_table,
)


def _text(text: object) -> str:
    # "<unparsed>" (or any data with a "<") would vanish as an HTML tag in GitHub's markdown.
    return str(text).replace("\n", " ").replace("<", "&lt;")


def md_table(table: Table) -> str:
    columns, rows = table
    if not rows:
        return "_(none)_\n"

    def cell(text: str) -> str:
        return _text(text).replace("|", "\\|")

    lines = ["| " + " | ".join(cell(c) for c in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def verdict_line(name: str, report: dict[str, Any]) -> str:
    """One line per GGUF: the verdict and the numbers behind it."""
    v = report["verdicts"][name]
    block = report["parity"][name]
    nxt = block.get("next_token") or {}
    primary = block.get("modes", {}).get(report["primary_mode"], {})
    facts = [megabytes(block.get("size_bytes"))]
    if primary:
        facts.append(f"agreement {pct(primary['agreement'])}")
        facts.append(f"{len(primary['flips'])} flips")
    if nxt.get("mean_kl") is not None:
        facts.append(f"mean KL {fmt(nxt['mean_kl'])}, top-1 {pct(nxt['top1_agreement'])}")
    head = f"- **{name}** ({', '.join(facts)}): **{'parity holds' if v['holds'] else 'parity fails'}**"
    if v["reasons"]:
        head += " — " + "; ".join(v["reasons"])
    return head


def render_markdown(report: dict[str, Any]) -> str:
    if is_answers(report):
        return render_answers_markdown(report)
    cfg = report["config"]
    out = [
        "# Parity report: Transformers vs GGUF\n",
        f"{report['n_examples']} examples · labels: {', '.join(report['labels'])} · modes: "
        f"{', '.join(report['modes'])} · tunegguf {report['tunegguf_version']} · {report['created']}\n",
        f"Thresholds: agreement ≥ {pct(cfg['min_agreement'])}, accuracy drop (95% CI upper) ≤ "
        f"{pct(cfg['max_accuracy_drop'])}, mean KL ≤ {cfg['max_mean_kl']}, identical token ids.\n",
        "## Verdicts\n",
    ]
    out += [verdict_line(name, report) for name in report["verdicts"]] or ["_(no GGUF files compared)_"]
    out += ["", "## Models\n", md_table(summary_table(report))]
    out += ["## Parity with the HF model\n", md_table(parity_table(report))]
    out += ["## Per-class recall\n", md_table(recall_table(report))]
    out.append("## Confusion matrices\n")
    for name, model in report["models"].items():
        for mode, m in (model.get("metrics") or {}).items():
            out += [f"**{name}** ({mode})\n", md_table(confusion_table(m))]
    out.append("## Flipped examples\n")
    limit = cfg["max_flips_shown"]
    for name, block in report["parity"].items():
        for mode, stats in block.get("modes", {}).items():
            flips = stats["flips"]
            out.append(f"**{name}** ({mode}): {len(flips)} of {stats['n']} rows answered differently from HF\n")
            if flips:
                out.append(md_table(flips_table(flips, report["labels"], limit)))
    out += diagnostics_markdown(report)
    out += ["## Speed\n", md_table(speed_table(report))]
    if report["warnings"]:
        out.append("## Warnings\n")
        out += [f"- {w}" for w in report["warnings"]] + [""]
    for title, value in report["extra_sections"].items():
        out.append(f"## {_text(title)}\n")
        for subtitle, table in section_tables(value):
            out += ([f"**{_text(subtitle)}**\n"] if subtitle else []) + [md_table(table)]
    return "\n".join(out).rstrip() + "\n"


def template_checks_head(report: dict[str, Any]) -> dict[str, Any] | None:
    """The template checks' verdict, GGUF and diffs as both reports show them; the keys are
    there even when the checks could not run (an unloadable file, an error)."""
    checks = report.get("template_checks")
    if not checks:
        return None
    verdict = {True: "all pass", False: "some FAIL"}.get(checks.get("passed"), "not checked")
    diffs = list((checks.get("diffs") or {}).items())
    # The multi-turn conversation (system, user, assistant, user) catches templates that drop history.
    diffs += [(f"multi-turn: {title}", diff) for title, diff in (checks.get("multi_turn_diffs") or {}).items()]
    return {"verdict": verdict, "gguf": checks.get("gguf") or "–", "diffs": diffs}


def diagnostics_markdown(report: dict[str, Any]) -> list[str]:
    """Stage attribution, template checks and the recommendation (absent in old reports)."""
    out: list[str] = []
    stages = report.get("stages") or {}
    if stages.get("steps"):
        where = ("at every reference answer token" if is_answers(report) else "at the answer position")
        out += ["## Where did the difference come from?\n",
                f"Each step compared with the model it was made from ({stages.get('mode')} predictions; "
                f"KL over the whole vocabulary {where}). {_text(stages.get('summary', ''))}.\n",
                md_table(stages_table(report))]
    checks = template_checks_head(report)
    if checks:
        out += [f"## Templates and tokens\n", f"One conversation rendered by every runtime ({checks['verdict']}; "
                f"GGUF {_text(checks['gguf'])}).\n", md_table(template_checks_table(report))]
        for title, diff in checks["diffs"]:
            out += [f"**{_text(title)}**\n", "```diff\n" + diff + "```\n"]
    weight_rows = weight_parity_table(report)
    if weight_rows[1]:
        out += ["## Weight-space parity\n", "Share of the fine-tune (merged − base) kept in each file's "
                "dequantized weights, before any inference; below the threshold the file erases the fine-tune. "
                "With an importance matrix each input column is also weighted by its mean squared activation on "
                "the training prompts, and that share decides.\n",
                md_table(weight_rows)]
    rec = report.get("recommendation")
    if rec and rec.get("rows"):
        choice = f"**{rec['choice']}**" if rec.get("choice") else "**none**"
        out += ["## Recommendation\n", f"Ship {choice}: {_text(rec['reason'])}.\n", md_table(recommendation_table(report))]
    imatrix_rows = imatrix_table(report)
    if imatrix_rows[1]:
        out += ["## Importance matrix\n", "The same quant type without and with an importance matrix collected "
                "from the training prompts (plain → imatrix).\n", md_table(imatrix_rows)]
    return out


# ---- answers ------------------------------------------------------------------------------


def answers_verdict_line(name: str, report: dict[str, Any]) -> str:
    """One line per GGUF for free-text answers: the verdict and the numbers it was judged on."""
    v = report["verdicts"][name]
    block = report["answers"].get(name) or {}
    tf, greedy = block.get("teacher_forced") or {}, block.get("greedy") or {}
    facts = [megabytes(block.get("size_bytes"))]
    if tf:
        facts += [f"mean KL {fmt((tf.get('kl') or {}).get('mean'))}", f"same top {pct((tf.get('same_top') or {}).get('rate'))}"]
    if greedy:
        facts += [f"greedy identical {pct(greedy.get('identical_rate'))}", f"stop agreement {pct(greedy.get('stop_agreement'))}"]
    head = f"- **{name}** ({', '.join(facts)}): **{'parity holds' if v['holds'] else 'parity fails'}**"
    if v.get("reasons"):
        head += " — " + "; ".join(v["reasons"])
    return head


def answers_thresholds_line(report: dict[str, Any]) -> str:
    t = answers_thresholds(report["config"])
    parts = [(f"mean KL ≤ {t['max_mean_kl']}" if "max_mean_kl" in t else None),
             (f"p99 KL ≤ {t['max_p99_kl']}" if "max_p99_kl" in t else None),
             (f"same top ≥ {pct(t['min_same_top'])}" if "min_same_top" in t else None),
             (f"greedy match (identical or top-5 tolerated) ≥ {pct(t['min_greedy_match'])}" if "min_greedy_match" in t else None),
             (f"stop agreement ≥ {pct(t['min_stop_agreement'])}" if "min_stop_agreement" in t else None)]
    budget = f" Greedy answers up to {t['max_new_tokens']} new tokens." if "max_new_tokens" in t else ""
    parts = [p for p in parts if p]
    return (f"Thresholds: {', '.join(parts)}." if parts else "") + budget


def answers_head(report: dict[str, Any]) -> str:
    store = report.get("reference_store") or {}
    how = ("exact, memory-mapped" if store.get("exact") else str(store.get("kind", "–"))) if store else "–"
    return (f"{report['n_examples']} examples · {report['n_answer_tokens']} reference answer tokens · HF reference "
            f"distributions: {how}, {megabytes(store.get('bytes'))} on disk · tunegguf {report['tunegguf_version']} · "
            f"{report['created']}")


def render_answers_markdown(report: dict[str, Any]) -> str:
    out = ["# Parity report: Transformers vs GGUF (answers)\n", answers_head(report) + "\n",
           answers_thresholds_line(report) + "\n", "## Verdicts\n"]
    out += [answers_verdict_line(name, report) for name in report["verdicts"]] or ["_(no GGUF files compared)_"]
    out += ["", "## Parity of the answers\n",
            "KL(HF‖GGUF), same top and Δp of the reference token are teacher-forced on the reference answers "
            "(the statistics `llama-perplexity --kl-divergence` prints); the greedy columns compare each GGUF's own "
            "answer with HF's. The HF rows give the reference metrics the GGUFs' are set beside.\n",
            md_table(answers_table(report))]
    out += ["## KL by position in the answer\n", "Mean (p90) KL per band of answer-token positions.\n",
            md_table(kl_by_position_table(report))]
    fd = first_divergence_table(report)
    if fd[1]:
        out += ["## Where the greedy answers first diverge\n", "Rows per band of the first token where the GGUF's "
                "greedy answer departs from HF's.\n", md_table(fd)]
    out += diagnostics_markdown(report)
    out += ["## Speed\n", md_table(answers_speed_table(report))]
    n_shown = len(report.get("examples") or [])
    out.append(f"Per-example answers ({n_shown} rows): report.html shows them side by side; report.json and "
               "predictions.jsonl hold all.\n")
    if report["warnings"]:
        out.append("## Warnings\n")
        out += [f"- {_text(w)}" for w in report["warnings"]] + [""]
    for title, value in report["extra_sections"].items():
        out.append(f"## {_text(title)}\n")
        for subtitle, table in section_tables(value):
            out += ([f"**{_text(subtitle)}**\n"] if subtitle else []) + [md_table(table)]
    return "\n".join(out).rstrip() + "\n"
