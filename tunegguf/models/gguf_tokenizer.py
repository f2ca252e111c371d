"""Build a Hugging Face fast tokenizer that tokenizes exactly as llama.cpp does a GGUF.

Transformers' own GGUF tokenizer reconstruction is not faithful for SmolLM2 (wrong EOS,
SentencePiece-style decoding). The recipe here, measured with 0 mismatches on 4,800
strings against llama.cpp (see ../shared/NOTES.md), is a byte-level BPE built from the
GGUF's tokens and merges with SmolLM2's pre-tokenizer (single digits, then GPT-2 regex).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunegguf.errors import TuneGGUFError

SPECIAL_TOKEN_TYPE = 3  # llama.cpp's LLAMA_TOKEN_TYPE_CONTROL


def read_gguf_fields(path: Path, keys: list[str]) -> dict[str, Any]:
    """Read scalar, string and array metadata fields from a GGUF header."""
    from gguf import GGUFReader

    try:
        reader = GGUFReader(str(path), "r")
    except Exception as exc:  # gguf raises ValueError / struct.error on a damaged header
        raise TuneGGUFError(f"{path}: not a readable GGUF file ({exc}); re-download or re-export it") from None
    out: dict[str, Any] = {}
    for key in keys:
        field = reader.fields.get(key)
        if field is None:
            continue
        out[key] = field.contents()
    return out


def tokenizer_from_gguf(path: Path) -> Any:
    """A `PreTrainedTokenizerFast` for a gpt2-style (byte-level BPE) GGUF vocabulary."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    keys = [
        "tokenizer.ggml.model", "tokenizer.ggml.pre", "tokenizer.ggml.tokens", "tokenizer.ggml.merges",
        "tokenizer.ggml.token_type", "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
        "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.padding_token_id", "tokenizer.chat_template",
    ]
    meta = read_gguf_fields(path, keys)
    if meta.get("tokenizer.ggml.model") != "gpt2":
        raise TuneGGUFError(
            f"{path}: tokenizer model {meta.get('tokenizer.ggml.model')!r} is not byte-level BPE (gpt2)"
        )
    if meta.get("tokenizer.ggml.pre") not in ("smollm", "gpt2"):
        raise TuneGGUFError(
            f"{path}: pre-tokenizer {meta.get('tokenizer.ggml.pre')!r} has no faithful recipe here"
        )
    tokens: list[str] = meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in meta["tokenizer.ggml.merges"]]
    types: list[int] = meta["tokenizer.ggml.token_type"]
    vocab = {tok: i for i, tok in enumerate(tokens)}

    backend = Tokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False))
    steps = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if meta.get("tokenizer.ggml.pre") == "smollm":
        steps.insert(0, pre_tokenizers.Digits(individual_digits=True))
    backend.pre_tokenizer = pre_tokenizers.Sequence(steps)
    backend.decoder = decoders.ByteLevel()
    specials = [tok for tok, kind in zip(tokens, types) if kind == SPECIAL_TOKEN_TYPE]
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in specials])

    eos = tokens[meta["tokenizer.ggml.eos_token_id"]]
    unk_id = meta.get("tokenizer.ggml.unknown_token_id")
    pad_id = meta.get("tokenizer.ggml.padding_token_id")
    bos_id = meta.get("tokenizer.ggml.bos_token_id")
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=tokens[bos_id] if bos_id is not None else None,
        eos_token=eos,
        unk_token=tokens[unk_id] if unk_id is not None else None,
        # Padding with EOS is safe: padded positions are masked out of loss and attention.
        pad_token=tokens[pad_id] if pad_id is not None else eos,
        chat_template=meta.get("tokenizer.chat_template"),
        clean_up_tokenization_spaces=False,
        model_max_length=8192,
    )
