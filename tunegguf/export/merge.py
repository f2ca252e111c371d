"""Merge a LoRA adapter into its base checkpoint, one safetensors shard at a time.

PEFT's `merge_and_unload` needs the whole model in RAM (16 GB for an 8B in 16-bit: a
12 GB Colab dies). Here each shard of the base is read, every LoRA delta that targets one
of its tensors is added (W += scale * B @ A, the product in float32), and the shard is
written: peak RAM is one shard plus the adapter. The result is bitwise PEFT's merge
(tests/test_export_merge.py checks it tensor by tensor).
"""

from __future__ import annotations

import hashlib
import json
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from tunegguf.errors import TuneGGUFError
from tunegguf.io import atomic_dir, read_json, require_free_disk, write_json
from tunegguf.models.adapter import ADAPTER_CONFIG, require_adapter_dir

PEFT_PREFIX = "base_model.model."
MERGE_INFO = "tunegguf_merge.json"


@dataclass(frozen=True)
class LoraDelta:
    """One LoRA pair and the base tensor it changes."""

    tensor: str
    """Base tensor name, e.g. model.layers.0.self_attn.q_proj.weight."""
    key_a: str
    key_b: str
    scale: float
    embedding: bool = False
    """Embedding LoRA stores A as (r, vocab) and B as (dim, r): delta = (B @ A).T."""
    fan_in_fan_out: bool = False


@dataclass
class AdapterPlan:
    """What the adapter does to the base, read from its config and tensor names only."""

    adapter_file: Path
    deltas: dict[str, LoraDelta] = field(default_factory=dict)
    replacements: dict[str, str] = field(default_factory=dict)
    """Base tensor -> adapter key holding a full copy (modules_to_save, saved embeddings)."""


@dataclass(frozen=True)
class MergeResult:
    merged_dir: Path
    merged_tensors: int
    """Base tensors that received a LoRA delta."""
    replaced_tensors: int
    skipped: bool
    """True when merged/ already held this exact merge (same base files, same adapter)."""


# ---- reading the adapter -------------------------------------------------------------


def _adapter_file(adapter_dir: Path) -> Path:
    for name in ("adapter_model.safetensors", "adapter_model.bin"):
        if (adapter_dir / name).is_file():
            return adapter_dir / name
    raise TuneGGUFError(f"{adapter_dir} holds no adapter_model.safetensors; pass the directory the fine-tune saved")


def _load_adapter_tensors(path: Path) -> dict[str, Any]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    return torch.load(str(path), map_location="cpu", weights_only=True)


def read_adapter_config(adapter_dir: Path) -> dict[str, Any]:
    path = require_adapter_dir(adapter_dir) / ADAPTER_CONFIG
    config = read_json(path)
    if config.get("peft_type", "LORA") != "LORA":
        raise TuneGGUFError(f"{path}: peft_type {config.get('peft_type')!r} is not LORA; only LoRA adapters can be merged")
    unsupported = {
        "use_dora": "DoRA", "lora_bias": "LoRA bias terms", "layer_replication": "layer replication",
        "trainable_token_indices": "trainable token indices", "use_qalora": "QA-LoRA",
    }
    for key, what in unsupported.items():
        if config.get(key):
            raise TuneGGUFError(f"{path}: {what} ({key}) is not supported by the shard-wise merge; train without it")
    return config


def _pattern_value(patterns: dict[str, Any], module: str, default: Any) -> Any:
    """PEFT's rank_pattern / alpha_pattern lookup (a key matches a module-name suffix)."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", module):
            return value
    return default


def plan_adapter(adapter_dir: Path, shapes: dict[str, Any] | None = None) -> AdapterPlan:
    """Read the adapter's tensor names into merge instructions (no base weights needed)."""
    import math

    config = read_adapter_config(adapter_dir)
    adapter_file = _adapter_file(adapter_dir)
    tensors = shapes if shapes is not None else {k: tuple(v.shape) for k, v in _load_adapter_tensors(adapter_file).items()}
    plan = AdapterPlan(adapter_file=adapter_file)
    pairs: dict[str, dict[str, str]] = {}
    for key in tensors:
        if not key.startswith(PEFT_PREFIX):
            raise TuneGGUFError(f"{adapter_file}: tensor {key} does not start with {PEFT_PREFIX!r}; not a PEFT adapter")
        name = key[len(PEFT_PREFIX):]
        match = re.fullmatch(r"(.+)\.(lora_A|lora_B)(?:\.[^.]+)?\.weight|(.+)\.(lora_embedding_A|lora_embedding_B)(?:\.[^.]+)?", name)
        if match:
            module = match.group(1) or match.group(3)
            part = match.group(2) or match.group(4)
            pairs.setdefault(module, {})[part] = key
            continue
        if "lora_magnitude_vector" in name:
            raise TuneGGUFError(f"{adapter_file}: {key} is a DoRA magnitude; DoRA adapters are not supported")
        if ".lora_" in name:
            raise TuneGGUFError(f"{adapter_file}: unexpected LoRA tensor {key}")
        # A full tensor: modules_to_save copies, or the embedding PEFT saves beside an
        # embedding LoRA (`...embed_tokens.base_layer.weight`). Either replaces the base's.
        target = name.replace(".base_layer.", ".").replace(".modules_to_save.default.", ".")
        target = target.replace(".modules_to_save.", ".")
        plan.replacements[target] = key
    for module, parts in sorted(pairs.items()):
        embedding = "lora_embedding_A" in parts or "lora_embedding_B" in parts
        a_name, b_name = ("lora_embedding_A", "lora_embedding_B") if embedding else ("lora_A", "lora_B")
        if a_name not in parts or b_name not in parts:
            missing = a_name if a_name not in parts else b_name
            raise TuneGGUFError(f"{adapter_file}: {module} has no {missing} tensor; the adapter file is incomplete")
        rank = tensors[parts[a_name]][0]
        alpha = _pattern_value(config.get("alpha_pattern") or {}, module, config.get("lora_alpha", 8))
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        plan.deltas[f"{module}.weight"] = LoraDelta(
            tensor=f"{module}.weight", key_a=parts[a_name], key_b=parts[b_name], scale=float(scale),
            embedding=embedding, fan_in_fan_out=bool(config.get("fan_in_fan_out")) and not embedding,
        )
    return plan


# ---- the base checkpoint -------------------------------------------------------------


def base_shards(base_dir: Path) -> list[Path]:
    """The base's weight files: safetensors shards (or .bin shards of older checkpoints)."""
    for suffix in ("safetensors", "bin"):
        index = base_dir / f"{'model' if suffix == 'safetensors' else 'pytorch_model'}.{suffix}.index.json"
        if index.is_file():
            names = sorted(set(read_json(index)["weight_map"].values()))
            return [base_dir / n for n in names]
        files = sorted(p for p in base_dir.glob(f"*.{suffix}") if not p.name.startswith(("adapter", "training")))
        if files:
            return files
    raise TuneGGUFError(f"{base_dir} holds no model weights (*.safetensors or *.bin)")


class ShardReader:
    """Tensors of one base shard, read one at a time (safetensors lazily, .bin memory-mapped).

    Each safetensors read opens and closes the file: a handle kept open leaves every page
    it touched mapped into this process, and RSS would grow to the shard's size.
    """

    def __init__(self, shard: Path):
        self.shard = shard
        if shard.suffix == ".safetensors":
            from safetensors import safe_open

            with safe_open(str(shard), framework="pt") as handle:
                self._meta = {k: (handle.get_slice(k).get_dtype(), tuple(handle.get_slice(k).get_shape()))
                              for k in handle.keys()}
            self.names = sorted(self._meta)
            self._state = None
        else:
            import torch

            self._state = torch.load(str(shard), map_location="cpu", weights_only=True, mmap=True)
            self.names = sorted(self._state)

    def meta(self, name: str) -> tuple[str, tuple[int, ...]]:
        """(safetensors dtype name, shape) without reading the data."""
        if self._state is not None:
            tensor = self._state[name]
            return SAFETENSORS_DTYPES[str(tensor.dtype).replace("torch.", "")], tuple(tensor.shape)
        return self._meta[name]

    def shape(self, name: str) -> tuple[int, ...]:
        return self.meta(name)[1]

    def get(self, name: str) -> Any:
        if self._state is not None:
            return self._state[name]
        from safetensors import safe_open

        with safe_open(str(self.shard), framework="pt") as handle:
            return handle.get_tensor(name).clone()  # a copy that outlives the file's mapping


SAFETENSORS_DTYPES = {
    "float32": "F32", "float16": "F16", "bfloat16": "BF16", "float64": "F64", "int64": "I64", "int32": "I32",
    "int16": "I16", "int8": "I8", "uint8": "U8", "bool": "BOOL", "float8_e4m3fn": "F8_E4M3", "float8_e5m2": "F8_E5M2",
}
ITEMSIZE = {"F64": 8, "I64": 8, "U64": 8, "F32": 4, "I32": 4, "U32": 4, "F16": 2, "BF16": 2, "I16": 2, "U16": 2}


def write_safetensors_streaming(path: Path, reader: ShardReader, transform: Callable[[str, Any], Any]) -> int:
    """Write a safetensors file tensor by tensor: only one tensor is in memory at a time.

    (safetensors' save_file wants the whole dict and copies every tensor to bytes first:
    twice the shard in RAM, which is what breaks an 8B merge on a 12 GB Colab.)
    The header needs every dtype and shape up front; a merged tensor keeps the base's.
    """
    import torch

    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    metas = {}
    for name in reader.names:
        dtype_name, shape = metas[name] = reader.meta(name)
        size = ITEMSIZE.get(dtype_name, 1)
        for dim in shape:
            size *= dim
        header[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * (-len(raw) % 8)  # the data starts 8-byte aligned, as safetensors writes it
    with Path(path).open("wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for name in reader.names:
            tensor = transform(name, reader.get(name))
            dtype_name = SAFETENSORS_DTYPES[str(tensor.dtype).replace("torch.", "")]
            if (dtype_name, tuple(tensor.shape)) != metas[name]:
                raise TuneGGUFError(f"merge changed {name} from {metas[name]} to {(dtype_name, tuple(tensor.shape))}")
            f.write(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().data)
            del tensor
    return offset


def _expected_delta_shape(delta: LoraDelta, a_shape: tuple, b_shape: tuple) -> tuple[int, int]:
    if a_shape[0] != b_shape[1]:
        raise TuneGGUFError(f"adapter tensors for {delta.tensor} disagree on the rank: A {list(a_shape)}, B {list(b_shape)}")
    if delta.embedding:
        return (a_shape[1], b_shape[0])
    if delta.fan_in_fan_out:
        return (a_shape[1], b_shape[0])
    return (b_shape[0], a_shape[1])


def check_adapter_fits(plan: AdapterPlan, base_shapes: dict[str, tuple], adapter_shapes: dict[str, tuple], base_dir: Path) -> None:
    """Every tensor the adapter touches exists in the base with the right shape."""
    for name, delta in plan.deltas.items():
        if name not in base_shapes:
            hint = " (the base ties it to the embeddings; train without it)" if name.startswith("lm_head") else ""
            raise TuneGGUFError(
                f"the adapter changes {name}, which the base {base_dir} does not have{hint}; was it trained on another model?"
            )
        want = _expected_delta_shape(delta, adapter_shapes[delta.key_a], adapter_shapes[delta.key_b])
        if tuple(base_shapes[name]) != tuple(want):
            raise TuneGGUFError(
                f"adapter/base mismatch at {name}: the LoRA delta is {list(want)}, the base tensor is "
                f"{list(base_shapes[name])}; the adapter was trained on another model"
            )
    for name, key in plan.replacements.items():
        if name not in base_shapes:
            raise TuneGGUFError(f"the adapter saves a full copy of {name}, which the base {base_dir} does not have")
        if tuple(base_shapes[name]) != tuple(adapter_shapes[key]):
            raise TuneGGUFError(
                f"adapter/base mismatch at {name}: the adapter's copy is {list(adapter_shapes[key])}, "
                f"the base tensor is {list(base_shapes[name])}"
            )


def merge_tensor(name: str, tensor: Any, plan: AdapterPlan, adapter: dict[str, Any]) -> tuple[Any, bool, bool]:
    """The merged value of one base tensor; flags: (got a LoRA delta, was replaced)."""
    import torch

    replaced = name in plan.replacements
    if replaced:
        tensor = adapter[plan.replacements[name]].to(tensor.dtype)
    delta = plan.deltas.get(name)
    if delta is None:
        return tensor, False, replaced
    a = adapter[delta.key_a].to(torch.float32)
    b = adapter[delta.key_b].to(torch.float32)
    update = b @ a
    if delta.embedding or delta.fan_in_fan_out:
        update = update.T
    update = update * delta.scale
    # PEFT's arithmetic, so the tensors are bitwise those of merge_and_unload: a Linear
    # adds the float32 delta and rounds once; an Embedding rounds the delta first.
    if delta.embedding:
        update = update.to(tensor.dtype)
    return (tensor.to(torch.float32) + update.to(torch.float32)).to(tensor.dtype), True, replaced


# ---- tokenizer and generation config -------------------------------------------------


def tokenizer_source(base_dir: Path, adapter_dir: Path | None) -> Path:
    """The adapter's tokenizer when the fine-tune saved one (it may hold a new template)."""
    if adapter_dir is not None and (adapter_dir / "tokenizer_config.json").is_file():
        return adapter_dir
    return base_dir


def end_of_turn_ids(base_eos: Any, tokenizer_eos: int) -> int | list[int]:
    """EOS for generation_config: the tokenizer's end-of-turn token; a base list that
    already holds it (Llama 3: end_of_text, eom, eot) is kept as is."""
    base = base_eos if isinstance(base_eos, list) else ([base_eos] if base_eos is not None else [])
    if len(base) > 1:
        return base if tokenizer_eos in base else [tokenizer_eos, *base]
    return tokenizer_eos


def write_tokenizer_and_generation(src: Path, base_dir: Path, target: Path) -> Any:
    """Save tokenizer (+ chat template) and a generation config whose EOS ends the turn."""
    from transformers import AutoTokenizer, GenerationConfig

    tokenizer = AutoTokenizer.from_pretrained(str(src))
    if not tokenizer.chat_template and src != base_dir:
        base_tok = AutoTokenizer.from_pretrained(str(base_dir))
        tokenizer.chat_template = base_tok.chat_template
    if tokenizer.eos_token_id is None:
        raise TuneGGUFError(f"the tokenizer in {src} has no EOS token; set eos_token in tokenizer_config.json")
    tokenizer.save_pretrained(str(target))
    try:
        generation = GenerationConfig.from_pretrained(str(base_dir))
    except OSError:
        generation = GenerationConfig()
    generation.eos_token_id = end_of_turn_ids(generation.eos_token_id, tokenizer.eos_token_id)
    if tokenizer.pad_token_id is not None:
        generation.pad_token_id = tokenizer.pad_token_id
    if tokenizer.bos_token_id is not None:
        generation.bos_token_id = tokenizer.bos_token_id
    generation.save_pretrained(str(target))
    return tokenizer


def _write_config(base_dir: Path, target: Path) -> None:
    config = read_json(base_dir / "config.json")
    # A 4-bit base's quantization_config would make loaders look for packed weights.
    config.pop("quantization_config", None)
    write_json(target / "config.json", config)


# ---- the merge -----------------------------------------------------------------------


def fingerprint(base_dir: Path, adapter_dir: Path) -> str:
    """Cheap identity of a merge: base files by size and mtime, adapter files by content."""
    from tunegguf.io import sha256_file

    digest = hashlib.sha256()
    for path in sorted(base_dir.iterdir()):
        if path.is_file():
            stat = path.stat()
            digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    for path in sorted(adapter_dir.iterdir()):
        if path.is_file():
            digest.update(f"{path.name}:{sha256_file(path)}\n".encode())
    return digest.hexdigest()


def merge_adapter(base_dir: Path, adapter_dir: Path, out_dir: Path, *, progress: bool = True) -> MergeResult:
    """Write base + adapter to `out_dir` (atomically) as a plain HF checkpoint."""
    from tqdm import tqdm

    base_dir, adapter_dir, out_dir = Path(base_dir), Path(adapter_dir), Path(out_dir)
    stamp = fingerprint(base_dir, adapter_dir)
    info_path = out_dir / MERGE_INFO
    if info_path.is_file() and read_json(info_path).get("fingerprint") == stamp:
        info = read_json(info_path)
        return MergeResult(out_dir, info["merged_tensors"], info["replaced_tensors"], skipped=True)

    adapter = _load_adapter_tensors(_adapter_file(adapter_dir))
    adapter_shapes = {k: tuple(v.shape) for k, v in adapter.items()}
    plan = plan_adapter(adapter_dir, adapter_shapes)
    shards = base_shards(base_dir)
    readers = [ShardReader(shard) for shard in shards]
    base_shapes = {name: reader.shape(name) for reader in readers for name in reader.names}
    check_adapter_fits(plan, base_shapes, adapter_shapes, base_dir)
    if not plan.deltas and not plan.replacements:
        raise TuneGGUFError(f"{adapter_dir}: the adapter holds no LoRA tensors")

    weights_bytes = sum(s.stat().st_size for s in shards)
    require_free_disk(out_dir.parent, int(weights_bytes * 1.05) + 50_000_000, "the merged checkpoint")
    counts = {"merged": 0, "replaced": 0}
    total_size = 0

    def transform(name: str, tensor: Any) -> Any:
        tensor, got_delta, was_replaced = merge_tensor(name, tensor, plan, adapter)
        counts["merged"] += got_delta
        counts["replaced"] += was_replaced
        return tensor

    with atomic_dir(out_dir) as tmp:
        weight_map: dict[str, str] = {}
        for reader in tqdm(readers, desc="merge", unit="shard", disable=not progress or len(shards) < 2):
            shard = reader.shard
            name = shard.name if shard.suffix == ".safetensors" else shard.with_suffix(".safetensors").name.replace(
                "pytorch_model", "model"
            )
            total_size += write_safetensors_streaming(tmp / name, reader, transform)
            weight_map.update({k: name for k in reader.names})
        merged, replaced = counts["merged"], counts["replaced"]
        if len(shards) > 1:
            write_json(tmp / "model.safetensors.index.json", {"metadata": {"total_size": total_size}, "weight_map": weight_map})
        _write_config(base_dir, tmp)
        write_tokenizer_and_generation(tokenizer_source(base_dir, adapter_dir), base_dir, tmp)
        write_json(tmp / MERGE_INFO, {
            "base_dir": str(base_dir), "adapter_dir": str(adapter_dir), "fingerprint": stamp,
            "merged_tensors": merged, "replaced_tensors": replaced,
            "lora_scales": sorted({d.scale for d in plan.deltas.values()}),
        })
    return MergeResult(out_dir, merged, replaced, skipped=False)

