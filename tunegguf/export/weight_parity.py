"""Weight-space parity: how much of the fine-tune a quantized GGUF still holds (issue 11).

For every tensor, with base B, merged M (= B + delta) and the dequantized GGUF Q:
  kept      = <Q - B, M - B> / ||M - B||^2   (1: the delta survives; 0: snapped back to B)
  rel_error = ||Q - M|| / ||M||
  delta_snr = ||M - B|| / ||Q - M||
Layers and the whole file aggregate the same sums, so a layer's `kept` is the mean over
its tensors weighted by ||delta||^2 (the projection of the concatenated delta).
With an importance matrix (a_j = mean x_j² of each weight's input column on the training
prompts, see imatrix.py) the same sums are also taken with every column weighted by a_j:
the share of the fine-tune's effect on the matmul outputs that survives, to first order.
That version decides the verdict when it exists, because it tracks behaviour: an imatrix
quant moves error into columns whose inputs are small, which the plain sums over-count.
A base dequantized from a GGUF (SmolLM2 from Q4_1) sits on that type's grid: quantizing
the merged model to the same type snaps most weights back to the base (NOTES.md).
Tensors are read one at a time (large ones in row chunks) with plain reads, not kept
memory maps: RAM holds a few chunks, never the models (benchmarks/weight_parity.py).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterator

from tunegguf.errors import TuneGGUFError
from tunegguf.export.gguf_file import GGUFHeader, TensorInfo, read_header, tensor_data

CHUNK_ELEMENTS = 1 << 22  # rows are read in chunks of about 4M values (16 MB each in float32)
KEPT, ERASED, NO_DELTA = "fine-tune kept", "fine-tune largely erased", "no fine-tune delta"
NOT_CHECKED = "not checked (the gguf package cannot dequantize its tensor types)"


@dataclass
class Sums:
    """Sufficient statistics; every metric is a ratio of these."""

    delta_sq: float = 0.0   # ||M - B||^2
    proj: float = 0.0       # <Q - B, M - B>
    err_sq: float = 0.0     # ||Q - M||^2
    merged_sq: float = 0.0  # ||M||^2

    def add(self, other: "Sums") -> None:
        self.delta_sq += other.delta_sq
        self.proj += other.proj
        self.err_sq += other.err_sq
        self.merged_sq += other.merged_sq

    def metrics(self) -> dict[str, float | None]:
        return {
            "kept": self.proj / self.delta_sq if self.delta_sq > 0 else None,
            "rel_error": math.sqrt(self.err_sq / self.merged_sq) if self.merged_sq > 0 else None,
            "delta_snr": (math.sqrt(self.delta_sq / self.err_sq) if self.err_sq > 0 else math.inf) if self.delta_sq > 0 else None,
            "delta_norm": math.sqrt(self.delta_sq),
        }


@dataclass(kw_only=True)
class _Shares:
    """The metrics of one tensor, one layer or (in WeightParity) the whole file."""

    kept: float | None
    rel_error: float | None
    delta_snr: float | None
    delta_norm: float
    kept_weighted: float | None = None
    """`kept` with each input column weighted by its importance (None: no importance matrix)."""


@dataclass(kw_only=True)
class TensorParity(_Shares):
    gguf_name: str
    hf_name: str
    type: str


@dataclass(kw_only=True)
class LayerParity(_Shares):
    layer: str
    """Block index as text, or "other" (embeddings, output, final norm)."""


@dataclass
class WeightParity:
    gguf_path: str
    file_type: str
    kept: float | None
    rel_error: float | None
    delta_snr: float | None
    delta_norm: float
    verdict: str
    erased_threshold: float
    erased: bool | None = None
    """True: the verdict is ERASED; False: kept, or no delta to keep; None: not checked."""
    base_source_quant: str | None = None
    """The type the base was dequantized from (tunegguf_source.json), if any."""
    tensor_types: dict[str, int] = field(default_factory=dict)
    layers: list[LayerParity] = field(default_factory=list)
    tensors: list[TensorParity] = field(default_factory=list)
    not_checked: list[dict[str, str]] = field(default_factory=list)
    """Tensors the gguf package cannot dequantize, by name with the reason."""
    not_compared: list[str] = field(default_factory=list)
    """GGUF tensors the converter made with no HF counterpart (e.g. rope_freqs)."""
    warnings: list[str] = field(default_factory=list)
    weighted: dict[str, Any] | None = None
    """kept / rel_error / delta_snr / delta_norm with input columns weighted by the
    importance matrix, over the tensors it covers (None: no matrix)."""
    imatrix_sha256: str | None = None

    @property
    def verdict_kept(self) -> float | None:
        """The share the verdict is judged on: activation-weighted when available."""
        return self.weighted["kept"] if self.weighted and self.weighted.get("kept") is not None else self.kept

    def summary(self) -> str:
        if self.kept is None:
            return f"{self.file_type}: {self.verdict}"
        text = f"{self.file_type}: keeps {self.kept:.1%} of the fine-tune delta"
        if self.weighted and self.weighted.get("kept") is not None:
            text += f" ({self.weighted['kept']:.1%} activation-weighted)"
        text += f", relative error {self.rel_error:.2e}, delta SNR {self.delta_snr:.2f} -> {self.verdict}"
        if self.not_checked:
            text += f" ({len(self.not_checked)} tensors not checked)"
        return text

    def to_dict(self, per_tensor: bool = True) -> dict[str, Any]:
        """JSON-safe: an infinite SNR (the quantized tensor equals the merged one) is "inf"."""
        data = asdict(self)
        if not per_tensor:
            data.pop("tensors")
        return _json_safe(data)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "WeightParity":
        """The inverse of to_dict (no per-tensor rows when to_dict left them out)."""
        plain = {f.name for f in fields(cls)} - {"erased", "layers", "tensors"}
        parity = cls(**{k: _from_json(v) for k, v in data.items() if k in plain}, erased=stored_erased(data))
        parity.layers = [LayerParity(**_from_json(row)) for row in data.get("layers") or []]
        parity.tensors = [TensorParity(**_from_json(row)) for row in data.get("tensors") or []]
        return parity


def stored_erased(data: dict[str, Any]) -> bool | None:
    """The `erased` flag of a stored weight parity (a manifest entry or a report block).
    Files written before the flag existed have only the verdict text: it is read from that."""
    if "erased" in data:
        return data["erased"]
    text = str(data.get("verdict") or "")
    if not text or text.startswith("not checked"):
        return None
    return text == ERASED


def _json_safe(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return "inf" if value > 0 else None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    return value


def _from_json(value: Any) -> Any:
    """One value of to_dict's output back: "inf" is an infinite SNR again."""
    if value == "inf":
        return math.inf
    if isinstance(value, dict):
        return {k: _from_json(v) for k, v in value.items()}
    return value


# ---- the HF side -----------------------------------------------------------------------


class HFWeights:
    """Sliceable access to the tensors of an HF checkpoint directory, one read at a time.

    Each read opens the safetensors file, copies the rows out and closes it again: a handle
    kept open would leave every page it touched mapped into this process (RSS that grows
    to the size of both checkpoints on a big model, although the kernel could drop it).
    """

    def __init__(self, directory: Path, role: str):
        from safetensors import safe_open

        self.directory, self.role = Path(directory), role
        if not (self.directory / "config.json").is_file():
            raise TuneGGUFError(f"{directory}: not a Hugging Face checkpoint (no config.json) for the {role} weights")
        files = sorted(self.directory.glob("*.safetensors"))
        files = [f for f in files if not f.name.startswith("adapter")]
        if not files:
            raise TuneGGUFError(f"{directory}: no *.safetensors weights for the {role} model")
        self.config = json.loads((self.directory / "config.json").read_text())
        self.where: dict[str, Path] = {}
        self._shapes: dict[str, tuple[int, ...]] = {}
        for file in files:
            with safe_open(str(file), framework="pt") as handle:
                for key in handle.keys():
                    self.where[key] = file
                    self._shapes[key] = tuple(handle.get_slice(key).get_shape())

    def shape(self, name: str) -> tuple[int, ...]:
        return self._shapes[name]

    def rows(self, name: str, start: int | None = None, stop: int | None = None) -> Any:
        """float32 numpy array of the named tensor (or of rows start:stop)."""
        import torch
        from safetensors import safe_open

        # torch reads every dtype safetensors stores (bf16 has no numpy type).
        with safe_open(str(self.where[name]), framework="pt") as handle:
            piece = handle.get_slice(name)
            tensor = piece[start:stop] if start is not None else piece[:]
            return tensor.to(torch.float32).numpy().copy()


def llama_permute(weights: Any, n_head: int, n_head_kv: int | None = None) -> Any:
    """The converter's Q/K row permutation for llama-family models (LlamaModel.permute)."""
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))  # numpy arrays and torch tensors alike


def _pair(q: Any, b: Any, m: Any, columns: Any) -> tuple[Sums, Sums | None]:
    """(plain sums, sums with every product weighted by `columns` or None) over one chunk
    (<= CHUNK_ELEMENTS values): float32 dot products (numpy's BLAS, several times faster
    than torch.dot here), float64 totals across chunks.

    <Q - B, D> is computed as <E, D> + ||D||^2 (E = Q - M): two subtractions, four dots.
    `columns` holds one weight per input column (the last axis).
    """
    import numpy as np

    q = np.asarray(q, dtype=np.float32).reshape(-1)
    b = np.asarray(b, dtype=np.float32).reshape(-1)
    m = np.asarray(m, dtype=np.float32).reshape(-1)
    d = m - b
    e = q - m
    delta_sq = float(np.dot(d, d))
    plain = Sums(delta_sq, float(np.dot(e, d)) + delta_sq, float(np.dot(e, e)), float(np.dot(m, m)))
    if columns is None:
        return plain, None
    weights = np.tile(np.asarray(columns, dtype=np.float32), q.size // len(columns))
    dw = d * weights
    delta_sq_w = float(np.dot(d, dw))
    weighted = Sums(delta_sq_w, float(np.dot(e, dw)) + delta_sq_w, float(np.dot(e, e * weights)),
                    float(np.dot(m, m * weights)))
    return plain, weighted


# ---- mapping GGUF tensors to HF tensors --------------------------------------------------


def _name_map(header: GGUFHeader, base: HFWeights) -> dict[str, str]:
    """GGUF tensor name -> HF tensor name, through gguf's own tensor-name tables."""
    import gguf

    arch_name = header.fields.get("general.architecture")
    archs = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch_name not in archs:
        raise TuneGGUFError(f"{header.path}: architecture {arch_name!r} is not known to the gguf package")
    blocks = header.fields.get(f"{arch_name}.block_count")
    hf_layers = base.config.get("num_hidden_layers")
    if blocks is not None and hf_layers is not None and int(blocks) != int(hf_layers):
        raise TuneGGUFError(
            f"different architecture: {header.path.name} has {blocks} blocks, the base {base.directory} has {hf_layers} layers"
        )
    table = gguf.get_tensor_name_map(archs[arch_name], int(blocks or hf_layers or 0))
    mapping: dict[str, str] = {}
    for hf_name in base.where:
        gguf_name = table.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gguf_name is not None:
            mapping[gguf_name] = hf_name
    return mapping


def _check_pair(base: HFWeights, merged: HFWeights) -> None:
    for name in base.where:
        if name not in merged.where:
            raise TuneGGUFError(f"base/merged mismatch: {name} is in the base {base.directory} but not in {merged.directory}")
        if base.shape(name) != merged.shape(name):
            raise TuneGGUFError(
                f"base/merged mismatch at {name}: {list(base.shape(name))} in the base, {list(merged.shape(name))} merged"
            )
    extra = sorted(set(merged.where) - set(base.where))
    if extra:
        raise TuneGGUFError(f"base/merged mismatch: {extra[0]} is in the merged model but not in the base")


def _row_chunks(rows: int, cols: int) -> Iterator[tuple[int, int]]:
    step = max(1, CHUNK_ELEMENTS // max(cols, 1))
    for start in range(0, rows, step):
        yield start, min(rows, start + step)


def _add(total: tuple[Sums, Sums | None], part: tuple[Sums, Sums | None]) -> None:
    total[0].add(part[0])
    if part[1] is not None and total[1] is not None:
        total[1].add(part[1])


def _compare_tensor(info: TensorInfo, hf_name: str, header: GGUFHeader, source: Path,
                    base: HFWeights, merged: HFWeights, columns: Any = None) -> tuple[Sums, Sums | None]:
    """(plain sums, sums weighted by `columns`, or None without them) for one tensor."""
    import numpy as np
    from gguf.constants import GGMLQuantizationType
    from gguf.quants import dequantize

    qtype = GGMLQuantizationType(info.type_id)
    gguf_shape = tuple(reversed(info.shape))
    hf_shape = base.shape(hf_name)
    if tuple(int(x) for x in hf_shape) != gguf_shape:
        raise TuneGGUFError(
            f"shape mismatch at {info.name} ({hf_name}): {list(gguf_shape)} in the GGUF, {list(hf_shape)} in the base"
        )
    kind = info.name.split(".")[-2] if info.name.count(".") >= 2 else ""
    if columns is not None and (len(gguf_shape) != 2 or len(columns) != gguf_shape[-1]):
        columns = None  # only a 2-D weight with one importance per input column
    if kind in ("attn_q", "attn_k") and len(gguf_shape) == 2:
        # Whole tensor: the converter may have permuted the rows per head (llama family).
        # Both layouts are tried; the right one is far closer (the wrong one scrambles rows).
        q = dequantize(tensor_data(header, info, source), qtype).reshape(gguf_shape)
        b, m = base.rows(hf_name), merged.rows(hf_name)
        arch = header.fields.get("general.architecture")
        n_head = header.fields.get(f"{arch}.attention.head_count")
        n_kv = header.fields.get(f"{arch}.attention.head_count_kv", n_head)
        candidates = [_pair(q, b, m, columns)]
        if n_head:
            heads = (n_head, n_head) if kind == "attn_q" else (n_head, n_kv)
            try:
                candidates.append(_pair(q, llama_permute(b, *heads), llama_permute(m, *heads), columns))
            except (ValueError, RuntimeError):  # shapes that cannot be a per-head permutation
                pass
        return min(candidates, key=lambda s: s[0].err_sq)
    total = (Sums(), Sums() if columns is not None else None)
    if len(gguf_shape) == 1:
        q = dequantize(tensor_data(header, info, source), qtype).reshape(gguf_shape)
        _add(total, _pair(q, base.rows(hf_name), merged.rows(hf_name), None))
        return total
    rows = gguf_shape[0]
    cols = int(np.prod(gguf_shape[1:]))
    for start, stop in _row_chunks(rows, cols):
        q = dequantize(tensor_data(header, info, source, start, stop), qtype).reshape((stop - start, *gguf_shape[1:]))
        _add(total, _pair(q, base.rows(hf_name, start, stop), merged.rows(hf_name, start, stop), columns))
    return total


def _layer_of(gguf_name: str) -> str:
    match = re.match(r"blk\.(\d+)\.", gguf_name)
    return match.group(1) if match else "other"


def base_source_quant(base_dir: Path) -> str | None:
    info = Path(base_dir) / "tunegguf_source.json"
    if info.is_file():
        return json.loads(info.read_text()).get("source_quant")
    return None


def weight_parity(gguf_path: Path, *, base_dir: Path, merged_dir: Path, erased_threshold: float = 0.5,
                  progress: bool = False, imatrix: Path | None = None) -> WeightParity:
    """Compare every tensor of a (quantized) GGUF with the base and merged HF weights; with
    an importance matrix file also activation-weighted, which then decides the verdict."""
    from collections import Counter

    from gguf.constants import GGMLQuantizationType, LlamaFileType
    from tqdm import tqdm

    gguf_path = Path(gguf_path)
    header = read_header(gguf_path)
    from tunegguf.export.gguf_file import check_complete

    check_complete(header)
    base, merged = HFWeights(base_dir, "base"), HFWeights(merged_dir, "merged")
    _check_pair(base, merged)
    mapping = _name_map(header, base)
    if not any(t.name in mapping for t in header.tensors):
        raise TuneGGUFError(f"different architecture: no tensor of {gguf_path.name} corresponds to a tensor of {base_dir}")
    gguf_names = {t.name for t in header.tensors}
    tied = bool(base.config.get("tie_word_embeddings"))
    for gguf_name, hf_name in mapping.items():
        if gguf_name not in gguf_names and not (tied and gguf_name == "output.weight"):
            raise TuneGGUFError(f"missing tensor: {gguf_path.name} has no {gguf_name} (the base's {hf_name})")

    file_type = header.fields.get("general.file_type")
    try:
        type_name = LlamaFileType(file_type).name.replace("MOSTLY_", "") if file_type is not None else "unknown"
    except ValueError:
        type_name = f"file type {file_type}"
    result = WeightParity(str(gguf_path), type_name, None, None, None, 0.0, NO_DELTA, erased_threshold,
                          base_source_quant=base_source_quant(base_dir))
    result.tensor_types = dict(Counter(GGMLQuantizationType(t.type_id).name for t in header.tensors))
    importance: dict[str, Any] = {}
    if imatrix is not None:
        from tunegguf.export.imatrix import read_imatrix
        from tunegguf.io import sha256_file

        importance = read_imatrix(Path(imatrix)).means()
        result.imatrix_sha256 = sha256_file(Path(imatrix))
    totals, weighted, per_layer = Sums(), Sums(), {}
    # disable=None: a bar on a terminal, silence in logs and pipes.
    bar = tqdm(header.tensors, desc=f"weight parity {gguf_path.name}", unit="tensor",
               disable=None if progress else True, leave=False)
    for info in bar:
        hf_name = mapping.get(info.name)
        if hf_name is None:
            result.not_compared.append(info.name)
            continue
        try:
            sums, sums_weighted = _compare_tensor(info, hf_name, header, gguf_path, base, merged,
                                                  importance.get(info.name))
        except NotImplementedError as exc:
            result.not_checked.append({
                "tensor": info.name, "type": GGMLQuantizationType(info.type_id).name,
                "reason": str(exc) or "the gguf package cannot dequantize this type",
            })
            continue
        totals.add(sums)
        layer = per_layer.setdefault(_layer_of(info.name), (Sums(), Sums()))
        layer[0].add(sums)
        if sums_weighted is not None:
            weighted.add(sums_weighted)
            layer[1].add(sums_weighted)
        metrics = sums.metrics()
        kept_weighted = sums_weighted.metrics()["kept"] if sums_weighted is not None else None
        result.tensors.append(TensorParity(gguf_name=info.name, hf_name=hf_name, type=GGMLQuantizationType(info.type_id).name,
                                           **metrics, kept_weighted=kept_weighted))
    metrics = totals.metrics()
    result.kept, result.rel_error, result.delta_snr, result.delta_norm = (
        metrics["kept"], metrics["rel_error"], metrics["delta_snr"], metrics["delta_norm"]
    )
    if weighted.delta_sq > 0:
        result.weighted = weighted.metrics()
    order = sorted(per_layer, key=lambda k: (k == "other", int(k) if k.isdigit() else 0))
    result.layers = [LayerParity(layer=k, **per_layer[k][0].metrics(), kept_weighted=per_layer[k][1].metrics()["kept"])
                     for k in order]
    if result.kept is None:
        result.verdict = NOT_CHECKED if result.not_checked else NO_DELTA
        result.erased = None if result.not_checked else False
    else:
        result.erased = result.verdict_kept < erased_threshold
        result.verdict = ERASED if result.erased else KEPT
    if result.base_source_quant and result.base_source_quant.upper() == type_name.upper():
        result.warnings.append(
            f"the base was dequantized from {result.base_source_quant}: quantizing to the same type snaps "
            "weights back onto the base's grid and erases most of the fine-tune"
        )
    return result
