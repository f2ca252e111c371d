"""Parity evaluation settings and the thresholds behind each verdict."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class AnswersConfig:
    """Free-text answers (instruction and chat rows): the greedy budget and the verdict's
    thresholds. Teacher-forced numbers are on the reference answer's tokens, greedy ones on
    each model's own answer; the rates are shares of rows."""

    max_new_tokens: int = 64
    """Greedy budget per answer; an answer still going at this length "did not stop"."""
    max_mean_kl: float = 0.05
    """Mean KL(HF || GGUF) per answer token, over the full vocabulary."""
    max_p99_kl: float = 1.0
    """99th percentile of the per-token KL: a few badly broken positions fail the file
    even when the mean is low."""
    min_same_top: float = 0.95
    """Share of answer tokens where both models rank the same token first."""
    min_greedy_match: float = 0.9
    """Share of rows whose greedy answer equals HF's, or first differs where each model's
    token is in the other's top 5 (a near-tie, as vLLM's GGUF tests accept)."""
    min_stop_agreement: float = 0.95
    """Share of rows where both models stop the same way (end-of-turn, or the budget):
    a GGUF that never stops fails here."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise ValueError("evaluate.answers.max_new_tokens must be at least 1")
        for name in ("max_mean_kl", "max_p99_kl"):
            if getattr(self, name) < 0:
                raise ValueError(f"evaluate.answers.{name} must be 0 or more (a KL in nats)")
        for name in ("min_same_top", "min_greedy_match", "min_stop_agreement"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"evaluate.answers.{name} must be between 0 and 1 (a share of rows or tokens)")


@dataclass
class EvaluateConfig:
    split: Literal["test", "validation"] = "test"
    limit: int | None = None
    """Score only the first N rows (stratified order is kept by the frozen split)."""
    modes: list[Literal["labels", "generate"]] = field(default_factory=lambda: ["labels", "generate"])
    """labels: label-token probabilities in one forward pass; generate: greedy text parsed
    strictly (shows format drift and endless output)."""
    max_new_tokens: int = 8
    batch_size: int = 16
    n_threads: int | None = None
    """llama.cpp threads (None: half the cores, llama-cpp-python's own default). More is
    not safer: on a shared 2-core machine 2 threads scored 15-20x slower than 1, because
    llama.cpp's threads spin-wait for each other when a core is busy elsewhere."""
    quants: list[str] = field(default_factory=list)
    """Which exported GGUF files to compare with the HF model (empty: all of them)."""
    bootstrap: int = 1000
    min_agreement: float = 0.99
    """Parity holds when the GGUF agrees with the HF model on at least this share..."""
    max_accuracy_drop: float = 0.01
    """...and its accuracy is not lower by more than this (upper end of the 95% CI)."""
    max_mean_kl: float = 0.05
    collapse_threshold: float = 0.9
    seed: int = 0

    n_ctx: int = 2048
    """Context in tokens. Every prompt must fit, plus max_new_tokens in generate mode: rows
    over it are handled by `too_long` for every model (HF included), and `tunegguf predict`
    refuses a text over it, naming the text."""
    too_long: Literal["drop", "truncate", "error"] = "drop"
    """Rows whose prompt is over n_ctx tokens (less max_new_tokens in generate mode), counted
    with the HF tokenizer before any model runs, as data.too_long handles the data stage's
    limits. drop: no model scores them, so all are compared on the same rows (report.json
    "too_long" lists them, with a warning); truncate: cut the text to fit, for every model;
    error: stop before any model runs, naming the first such row."""
    llama_extra_buffers: Literal["auto", True, False] = "auto"
    """Let llama.cpp repack quantized weights for its fast CPU "extra buffer" kernels
    (CPU_REPACK on AVX2 / AVX-512 / NEON, AMX on Xeons). auto: on where this host's probe
    says they are safe (`tunegguf doctor` shows it): a child process loads small quantized
    SmolLM2 files with and without them and compares the logits; a crash, a hang or other
    logits turn them off. The probe runs once per host and llama-cpp-python version (a few
    seconds) and is cached. On one AMX machine they segfaulted with llama-cpp-python
    0.3.36 (llama.cpp #20824); false is the plain kernels, true skips the probe."""
    max_unparsed_rate: float = 0.2
    """In generate mode a GGUF whose answers are unparseable for more than this share of
    the rows fails parity, even when the HF model is just as bad (then both are broken)."""
    ece_bins: int = 10
    """Equal-width confidence bins for the expected calibration error."""
    max_flips_shown: int = 50
    """Flipped examples listed in report.md / report.html (report.json keeps all)."""
    plots: bool = True
    """Draw the figures of report.html (confusion matrices, probability scatter, quant
    ladder, speed); false skips matplotlib for a faster, text-only report."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where the Transformers model runs (auto: CUDA when present)."""
    template_checks: bool = True
    """Render one prompt through the HF template, the GGUF's embedded template and the
    Modelfile, and check BOS and stop tokens (report section "Templates and tokens");
    a vocab-only llama.cpp load, a few seconds."""
    answers: AnswersConfig = field(default_factory=AnswersConfig)
    """Instruction and chat rows (free-text answers): budget and thresholds."""

    def __post_init__(self) -> None:
        if isinstance(self.answers, dict):
            # Built from a stored report's config (recommend) rather than through from_dict.
            self.answers = AnswersConfig(**{k: v for k, v in self.answers.items()
                                            if k in AnswersConfig.__dataclass_fields__})
        if not self.modes:
            raise ValueError("evaluate.modes must name at least one of: labels, generate")
        if len(set(self.modes)) != len(self.modes):
            raise ValueError(f"evaluate.modes lists a mode twice: {self.modes}")
        if isinstance(self.llama_extra_buffers, str) or not isinstance(self.llama_extra_buffers, bool):
            # 1 == True passes the Literal check; quoted "true" may come from a stored report.
            from tunegguf.evaluate.backends.kernels import normalize_setting

            self.llama_extra_buffers = normalize_setting(self.llama_extra_buffers)
        if self.batch_size < 1:
            raise ValueError("evaluate.batch_size must be at least 1")
        if self.max_new_tokens < 1:
            raise ValueError("evaluate.max_new_tokens must be at least 1")
        if self.limit is not None and self.limit < 1:
            raise ValueError("evaluate.limit must be at least 1 (or null for all rows)")
        if self.bootstrap < 0:
            raise ValueError("evaluate.bootstrap must be 0 (no intervals) or more")
        if not 0.0 <= self.min_agreement <= 1.0:
            raise ValueError("evaluate.min_agreement must be between 0 and 1")
        if self.n_ctx < 32:
            raise ValueError("evaluate.n_ctx must be at least 32")
        if "generate" in self.modes and self.max_new_tokens >= self.n_ctx:
            raise ValueError(f"evaluate.max_new_tokens ({self.max_new_tokens}) leaves no room for the prompt in "
                             f"evaluate.n_ctx ({self.n_ctx}); raise n_ctx or lower max_new_tokens")
        # answers.max_new_tokens against n_ctx is checked per row when answer rows are scored
        # (evaluate.run), so a classification config with a small n_ctx is not refused for it.
