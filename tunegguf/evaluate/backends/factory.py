"""The one way to open a backend: a BackendSpec says what the model is and where; the
options say how to run it; `open_backend` picks the runtime.

The runtimes are imported only when one is opened (torch, llama.cpp and the HTTP client
are not needed to describe a model).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from tunegguf.evaluate.backends.base import Backend


class ModelKind(str, Enum):
    """What a scored model is in the comparison (ModelSpec.kind, report.json "kind")."""

    HF = "hf"
    """The Transformers reference (base, or base with the adapter merged in), scored first."""
    HF_ADAPTER = "hf_adapter"
    """Base + LoRA adapter NOT merged, scored before HF for stage attribution only (no verdict)."""
    GGUF = "gguf"
    """A GGUF compared with the reference: a file in llama.cpp, or a server that serves one."""

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class BackendSpec:
    """One model to open."""

    kind: ModelKind
    name: str
    """Shown in reports, e.g. "hf", "Q4_K_M"."""
    model: str | Path | None = None
    """HF: the checkpoint (alias, hub name or directory); HF_ADAPTER: the base it was trained
    on; GGUF: the file (unused with `url`)."""
    adapter_dir: Path | None = None
    """HF: a LoRA adapter merged in at load; HF_ADAPTER: the adapter, applied unmerged."""
    url: str | None = None
    """GGUF only: a running OpenAI-compatible server that serves it, instead of a file."""
    vocab_size: int | None = None
    """With `url`: the logits width to report (servers do not say; the HF model's)."""

    def __post_init__(self) -> None:
        if self.kind == ModelKind.HF_ADAPTER and self.adapter_dir is None:
            raise ValueError(f"{self.name}: an {ModelKind.HF_ADAPTER} backend needs adapter_dir")

    @property
    def file(self) -> Path | None:
        """The GGUF file read (None for a checkpoint or a server)."""
        return Path(self.model) if self.kind == ModelKind.GGUF and self.url is None else None


@dataclass(frozen=True)
class BackendOptions:
    """How to run: each runtime reads its own settings and ignores the rest."""

    device: str = "auto"
    """Transformers: "auto" (CUDA when present), "cpu" or "cuda"."""
    batch_size: int = 16
    """Prompts per forward pass (Transformers) / sequences per llama_decode (llama.cpp: the
    context's n_seq_max, with one unified KV cache; 1 scores one prompt per decode)."""
    n_ctx: int = 2048
    """llama.cpp: context in tokens."""
    n_threads: int | None = None
    """llama.cpp: threads (None: its default)."""
    extra_buffers: bool = False
    """llama.cpp: repack weights for the CPU "extra buffer" kernels."""


def open_backend(spec: BackendSpec, options: BackendOptions = BackendOptions()) -> Backend:
    """Load the model `spec` names in its runtime, behind the Backend protocol."""
    if spec.kind in (ModelKind.HF, ModelKind.HF_ADAPTER):
        from tunegguf.evaluate.backends.hf import HFBackend, attach_adapter

        merged = spec.kind == ModelKind.HF
        backend = HFBackend(spec.model, spec.adapter_dir if merged else None, device=options.device,
                            batch_size=options.batch_size, name=spec.name)
        if not merged:
            # PEFT applies the low-rank update on the fly, so the merge itself is a measured step.
            backend.model = attach_adapter(backend.model, spec.adapter_dir, merge=False,
                                           hint=f"the base model here is {spec.model}; pass the base it was trained on")
            backend.info.update({"adapter": str(spec.adapter_dir), "merged": False})
        return backend
    if spec.kind != ModelKind.GGUF:
        raise ValueError(f"unknown model kind {spec.kind!r}")
    if spec.url is not None:
        from tunegguf.evaluate.backends.server import ServerBackend

        return ServerBackend(spec.url, name=spec.name, vocab_size=spec.vocab_size)
    from tunegguf.evaluate.backends.llamacpp import LlamaCppBackend

    return LlamaCppBackend(spec.model, n_ctx=options.n_ctx, n_threads=options.n_threads, name=spec.name,
                           extra_buffers=options.extra_buffers, n_seq_max=options.batch_size)
