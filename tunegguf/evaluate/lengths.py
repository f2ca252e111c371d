"""One token limit for every backend: prompts over the context are dealt with before any model runs.

`fit_to_limit` counts the rendered prompts once (the HF tokenizer) and drops, cuts or
refuses the rows over the limit as evaluate.too_long says, so every model is scored on the
same rows and none is fed a row it cannot take (a 12k-token row would run the HF pass for
minutes, and fail every GGUF). `check_prompt_tokens` holds a backend's own token ids to the
same limit, naming the row: a GGUF's tokenizer may count a few tokens more, and `predict`
has only the backend's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tunegguf.data.clean import LengthLimit, cut_to_tokens
from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.evaluate.config import EvaluateConfig

SHOWN_IDS = 5
"""Ids of dropped or cut rows named in the report's warning (report.json lists all)."""


def row_name(index: int, example: Example) -> str:
    """How messages name a scored row: 'row 3 (id 'r7')' (1-based, in scoring order)."""
    return f"row {index + 1} (id {example.id!r})"


@dataclass(frozen=True)
class PromptLimit:
    """The most tokens a prompt may have, and what sets it (for messages)."""

    tokens: int
    setting: str
    """E.g. "evaluate.n_ctx=2048 less evaluate.max_new_tokens=8"."""
    fix: str = "raise evaluate.n_ctx"

    @classmethod
    def of(cls, config: EvaluateConfig) -> "PromptLimit":
        """evaluate.n_ctx, less the tokens generate mode adds after the prompt."""
        reserve = config.max_new_tokens if "generate" in config.modes else 0
        setting = f"evaluate.n_ctx={config.n_ctx}" + (f" less evaluate.max_new_tokens={reserve}" if reserve else "")
        return cls(config.n_ctx - reserve, setting)

    def over(self, tokens: int) -> str:
        return f"{tokens:,} tokens as prompted, over the limit of {self.tokens:,} ({self.setting})"


def check_prompt_tokens(token_ids: Sequence[Sequence[int]], names: Sequence[str], limit: PromptLimit) -> None:
    """A one-line error naming the first prompt over `limit` (names: one per prompt)."""
    for name, ids in zip(names, token_ids):
        if len(ids) > limit.tokens:
            raise TuneGGUFError(f"{name}: {limit.over(len(ids))}; {limit.fix} or shorten the text")


@dataclass
class Fitted:
    examples: list[Example]
    prompts: list[str]
    report: dict[str, Any]
    """report.json "too_long": the limit, the policy, and the rows dropped or cut (id, row, tokens)."""
    warnings: list[str] = field(default_factory=list)


def fit_to_limit(
    examples: Sequence[Example],
    prompts: Sequence[str],
    *,
    count: Callable[[Sequence[str]], list[int]],
    render: Callable[[Example], str],
    limit: PromptLimit,
    policy: str,
) -> Fitted:
    """Rows whose prompt is over `limit` tokens: dropped for every model, cut to fit, or an
    error naming the first one (policy: evaluate.too_long). count: tokens per prompt."""
    lengths = count(prompts)
    over = [i for i, tokens in enumerate(lengths) if tokens > limit.tokens]
    report: dict[str, Any] = {"limit": limit.tokens, "setting": limit.setting, "policy": policy,
                              "dropped": [], "truncated": []}
    if not over:
        return Fitted(list(examples), list(prompts), report)
    first = over[0]
    if policy == "error":
        raise TuneGGUFError(
            f"{row_name(first, examples[first])}: {limit.over(lengths[first])}; {limit.fix}, shorten or remove "
            f"the row, or set evaluate.too_long: drop or truncate"
        )
    rows = [{"id": examples[i].id, "row": i + 1, "tokens": lengths[i]} for i in over]
    kept_examples, kept_prompts = list(examples), list(prompts)
    if policy == "truncate":
        cut = LengthLimit(measure=lambda e: count([render(e)])[0], max_seq_length=limit.tokens)
        for i in over:
            try:
                kept_examples[i] = cut_to_tokens(examples[i], cut)
            except TuneGGUFError:
                raise TuneGGUFError(
                    f"{row_name(i, examples[i])}: the prompt around the text alone is over {limit.tokens:,} tokens "
                    f"({limit.setting}); {limit.fix} or shorten the prompt template"
                ) from None
            kept_prompts[i] = render(kept_examples[i])
        report["truncated"] = rows
        done = "were cut to fit for every model (evaluate.too_long: truncate)"
    else:
        if len(over) == len(lengths):
            raise TuneGGUFError(
                f"all {len(lengths)} rows are over {limit.tokens:,} tokens as prompted ({limit.setting}); {limit.fix}"
            )
        dropped = set(over)
        kept_examples = [e for i, e in enumerate(examples) if i not in dropped]
        kept_prompts = [p for i, p in enumerate(prompts) if i not in dropped]
        report["dropped"] = rows
        done = "were left out for every model, so all are compared on the same rows (evaluate.too_long: drop)"
    ids = ", ".join(repr(r["id"]) for r in rows[:SHOWN_IDS]) + (", ..." if len(rows) > SHOWN_IDS else "")
    warning = (f"{len(rows)} of {len(lengths)} rows are over {limit.tokens:,} tokens as prompted ({limit.setting}) "
               f"and {done}: ids {ids}; {limit.fix} to score them whole")
    return Fitted(kept_examples, kept_prompts, report, [warning])


__all__ = ["Fitted", "PromptLimit", "check_prompt_tokens", "fit_to_limit", "row_name"]
