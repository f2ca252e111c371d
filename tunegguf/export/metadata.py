"""Tokenizer metadata of a GGUF: read it, and fix BOS/EOS/EOT and the chat template.

The converter takes these from the HF tokenizer; this module checks the result against
the tokenizer the model was trained with and, where they differ (a base whose EOS is
`<|end_of_text|>` while the fine-tune stops on `<|eot_id|>`), fixes the header: token ids
in place (same width); a new key or a different chat template by re-encoding the header
and streaming the tensor data after it. Quantized files inherit the fixed header.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegguf.export.gguf_file import GGUFHeader, patch_scalar, read_header, rewrite_header

KEYS = {
    "model": "tokenizer.ggml.model",
    "pre": "tokenizer.ggml.pre",
    "bos": "tokenizer.ggml.bos_token_id",
    "eos": "tokenizer.ggml.eos_token_id",
    "eot": "tokenizer.ggml.eot_token_id",
    "add_bos": "tokenizer.ggml.add_bos_token",
    "template": "tokenizer.chat_template",
    "arch": "general.architecture",
    "file_type": "general.file_type",
}


@dataclass(frozen=True)
class TokenizerMeta:
    model: str | None
    pre: str | None
    bos_id: int | None
    eos_id: int | None
    eot_id: int | None
    add_bos: bool | None
    chat_template: str | None
    arch: str | None
    file_type: int | None


def read_tokenizer_meta(path: Path, header: GGUFHeader | None = None) -> TokenizerMeta:
    fields = (header or read_header(path)).fields
    get = {name: fields.get(key) for name, key in KEYS.items()}
    return TokenizerMeta(
        model=get["model"], pre=get["pre"], bos_id=get["bos"], eos_id=get["eos"], eot_id=get["eot"],
        add_bos=get["add_bos"], chat_template=get["template"], arch=get["arch"], file_type=get["file_type"],
    )


def wanted_changes(meta: TokenizerMeta, *, eos_id: int, bos_id: int | None, chat_template: str | None) -> dict[str, Any]:
    """Header fields that differ from what the HF tokenizer says: key -> new value."""
    changes: dict[str, Any] = {}
    if meta.eos_id != eos_id:
        changes[KEYS["eos"]] = eos_id
    # Without the key llama.cpp guesses EOT by scanning token texts in hash-map order
    # (SmolLM2 gets <|endoftext|>, not <|im_end|>): pin it to the end-of-turn token.
    if meta.eot_id != eos_id:
        changes[KEYS["eot"]] = eos_id
    if bos_id is not None and meta.bos_id is not None and meta.bos_id != bos_id:
        changes[KEYS["bos"]] = bos_id
    if chat_template and meta.chat_template != chat_template:
        changes[KEYS["template"]] = chat_template
    return changes


def apply_changes(path: Path, changes: dict[str, Any]) -> None:
    rest = {}
    for key, value in changes.items():
        if isinstance(value, int) and patch_scalar(path, key, value):
            continue
        rest[key] = value
    if rest:
        rewrite_header(path, rest)


def fix_tokenizer_metadata(path: Path, tokenizer: Any) -> list[str]:
    """Make the GGUF's BOS/EOS/EOT and chat template those of `tokenizer`; list what changed."""
    meta = read_tokenizer_meta(path)
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    changes = wanted_changes(meta, eos_id=tokenizer.eos_token_id, bos_id=tokenizer.bos_token_id, chat_template=template)
    if changes:
        apply_changes(path, changes)
    return [
        f"{key} set to {'the tokenizer chat template' if key == KEYS['template'] else value}"
        for key, value in changes.items()
    ]
