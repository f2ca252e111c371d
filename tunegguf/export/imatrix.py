"""Importance matrix (llama.cpp's "imatrix") from the training prompts, by a small own pass.

llama.cpp's low-bit quantizers weight each column's rounding error by how large that
column's input activations are: for a weight W [out, in] they take, per input column j,
the mean over tokens of x_j² (x = the activations the matmul sees). `llama-imatrix`
collects those means while running the GGUF model over a text file. llama-cpp-python
exposes no such pass, so we collect the same statistic with forward pre-hooks on the
merged Transformers model (the very weights the f16 GGUF holds) over the rendered
training sequences: prompt + answer, byte-identical to what fine-tuning saw.

The file is written in llama.cpp's GGUF imatrix format (`<tensor>.in_sum2` + `.counts`,
`imatrix.datasets`, `imatrix.chunk_count`, `imatrix.chunk_size`), so the same file also
works with `llama-quantize --imatrix` on a bigger machine.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tunegguf.errors import TuneGGUFError
from tunegguf.io import atomic_path

SUFFIX = "-imat"
"""Appended to a quant's name for its importance-matrix variant: Q4_K_M-imat, model-Q4_K_M-imat.gguf."""


def plain_quant(label: str) -> str:
    """'Q4_K_M-imat' -> 'Q4_K_M' (the llama.cpp type); other names unchanged."""
    return label[: -len(SUFFIX)] if label.upper().endswith(SUFFIX.upper()) else label


def is_imatrix_label(label: str) -> bool:
    return label.upper().endswith(SUFFIX.upper())


@dataclass
class ImportanceMatrix:
    """Per GGUF weight name: sum over tokens of x_j² per input column, and the token count."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunks: int = 0
    """Sequences run through the model (llama.cpp's chunk count)."""
    tokens: int = 0

    def means(self) -> dict[str, np.ndarray]:
        """What llama.cpp's quantizer takes: mean x_j² per column (in_sum2 / counts)."""
        return {name: (self.sums[name] / max(self.counts[name], 1)).astype(np.float32) for name in self.sums}


# ---- collecting ----------------------------------------------------------------------------


def gguf_weights(gguf_path: Path) -> tuple[str, int, dict[str, int]]:
    """(architecture, block count, {2-D weight name: ne0}) of a GGUF: ne0 is the matmul input width."""
    from tunegguf.export.gguf_file import read_header

    header = read_header(Path(gguf_path))
    arch = str(header.fields.get("general.architecture"))
    blocks = int(header.fields.get(f"{arch}.block_count") or 0)
    return arch, blocks, {t.name: int(t.shape[0]) for t in header.tensors if len(t.shape) >= 2}


def _gguf_name_table(arch_name: str, blocks: int) -> Any:
    import gguf

    archs = {name: arch for arch, name in gguf.MODEL_ARCH_NAMES.items()}
    if arch_name not in archs:
        raise TuneGGUFError(f"importance matrix: architecture {arch_name!r} is not known to the gguf package")
    return gguf.get_tensor_name_map(archs[arch_name], blocks)


def _hf_module_name(name: str) -> str:
    """A module name without PEFT's wrappers: base_model.model.X.base_layer -> X."""
    return name.removeprefix("base_model.model.").removesuffix(".base_layer")


def collect_importance(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    *,
    gguf_path: Path,
    batch_size: int = 8,
    max_length: int = 1024,
    dataset: str = "training prompts",
    progress: bool = True,
) -> ImportanceMatrix:
    """Run `texts` (already rendered; specials parsed, nothing added) through `model` and
    return the imatrix of every linear layer that maps to a GGUF weight.

    Only weights the GGUF at `gguf_path` holds with a matching width are kept; a tied
    lm_head maps onto token_embd.weight when the GGUF has no output.weight.
    """
    import torch
    from tqdm.auto import tqdm

    if not texts:
        raise TuneGGUFError("importance matrix: no training rows to collect activations from")
    arch, blocks, widths = gguf_weights(gguf_path)
    table = _gguf_name_table(arch, blocks or int(model.config.num_hidden_layers))
    tied = bool(getattr(model.config, "tie_word_embeddings", False))
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}
    mask_holder: dict[str, torch.Tensor] = {}
    handles = []

    def target_name(module_name: str) -> str | None:
        gguf_name = table.get_name(module_name + ".weight", try_suffixes=(".weight",))
        if gguf_name is None:
            return None
        if gguf_name == "output.weight" and gguf_name not in widths and tied:
            gguf_name = "token_embd.weight"  # the tied head multiplies by the embedding matrix
        return gguf_name

    def hook_for(gguf_name: str):
        def hook(_module: Any, args: tuple) -> None:
            x = args[0]
            mask = mask_holder["mask"].to(x.device)  # layers may sit on other devices (device_map="auto")
            rows = x.reshape(-1, x.shape[-1])[mask.reshape(-1)].float()
            sq = (rows * rows).sum(dim=0)
            if gguf_name in sums:
                sums[gguf_name] += sq
            else:
                sums[gguf_name] = sq
            counts[gguf_name] = counts.get(gguf_name, 0) + int(rows.shape[0])
        return hook

    for module_name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear) or ".lora_" in module_name:  # PEFT's A/B: not GGUF weights
            continue
        gguf_name = target_name(_hf_module_name(module_name))
        if gguf_name is None:
            continue
        if widths.get(gguf_name) != module.in_features:
            continue
        handles.append(module.register_forward_pre_hook(hook_for(gguf_name)))
    if not handles:
        raise TuneGGUFError("importance matrix: no linear layer of the model maps to a GGUF weight")

    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"][:max_length] for t in texts]
    tokens = 0
    bar = tqdm(total=len(ids), desc="importance matrix", unit="row", disable=not progress, file=sys.stderr)
    model.eval()
    try:
        with torch.inference_mode():
            for start in range(0, len(ids), batch_size):
                batch = [row for row in ids[start : start + batch_size] if row]
                if not batch:
                    continue
                width = max(len(row) for row in batch)
                input_ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
                attention = torch.zeros((len(batch), width), dtype=torch.long)
                for i, row in enumerate(batch):  # right padding: positions of real tokens stay 0..n-1
                    input_ids[i, : len(row)] = torch.tensor(row)
                    attention[i, : len(row)] = 1
                mask_holder["mask"] = attention.bool().to(device)
                model(input_ids=input_ids.to(device), attention_mask=attention.to(device), use_cache=False)
                tokens += int(attention.sum())
                bar.update(len(batch))
    finally:
        bar.close()
        for handle in handles:
            handle.remove()
    result = ImportanceMatrix(datasets=[dataset], chunks=len(ids), tokens=tokens)
    for name, total in sums.items():
        result.sums[name] = total.double().cpu().numpy()
        result.counts[name] = counts[name]
    return result


def load_for_collection(model_dir: Path) -> tuple[Any, Any]:
    """The merged checkpoint for the pass: float32 on a CPU (exact sums for small models,
    the checkpoint's dtype above 2B parameters to bound memory), its own dtype on a GPU
    with accelerate placing what does not fit."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    if torch.cuda.is_available():
        model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype="auto", device_map="auto")
        return model, tokenizer
    config = AutoConfig.from_pretrained(str(model_dir))
    params = _approx_params(config)
    dtype = torch.float32 if params < 2e9 else "auto"
    return AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=dtype), tokenizer


def _approx_params(config: Any) -> float:
    hidden = getattr(config, "hidden_size", 0) or 0
    layers = getattr(config, "num_hidden_layers", 0) or 0
    inter = getattr(config, "intermediate_size", 4 * hidden) or 4 * hidden
    vocab = getattr(config, "vocab_size", 0) or 0
    return layers * (4 * hidden * hidden + 3 * hidden * inter) + 2 * vocab * hidden


def quantization_error(quantized: Path, reference: Path, importance: dict[str, np.ndarray]) -> dict[str, float]:
    """How far a quantized GGUF's weights are from the unquantized GGUF's, over the weights
    that have an importance (mean x_j² per input column a_j):

      weighted_rel_sq_error = Σ a_j (W_ij − Ŵ_ij)² / Σ a_j W_ij²   (the matmul output error on those inputs, to first order)
      rel_sq_error          = Σ (W_ij − Ŵ_ij)² / Σ W_ij²
    """
    from gguf import GGUFReader
    from gguf.quants import dequantize

    ref = {t.name: t for t in GGUFReader(str(reference)).tensors}
    sums = {"weighted_err": 0.0, "weighted_norm": 0.0, "err": 0.0, "norm": 0.0}
    for tensor in GGUFReader(str(quantized)).tensors:
        if tensor.name not in importance:
            continue
        width = int(tensor.shape[0])
        w = dequantize(tensor.data, tensor.tensor_type).reshape(-1, width).astype(np.float64)
        w0 = dequantize(ref[tensor.name].data, ref[tensor.name].tensor_type).reshape(-1, width).astype(np.float64)
        err, norm = (w - w0) ** 2, w0 ** 2
        weights = importance[tensor.name].astype(np.float64)
        sums["weighted_err"] += float((err * weights).sum())
        sums["weighted_norm"] += float((norm * weights).sum())
        sums["err"] += float(err.sum())
        sums["norm"] += float(norm.sum())
    return {"weighted_rel_sq_error": sums["weighted_err"] / sums["weighted_norm"],
            "rel_sq_error": sums["err"] / sums["norm"]}


# ---- the file ------------------------------------------------------------------------------


def write_imatrix(path: Path, matrix: ImportanceMatrix, *, chunk_size: int = 0) -> Path:
    """llama.cpp's GGUF imatrix file, written atomically."""
    import gguf

    path = Path(path)
    with atomic_path(path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), arch="imatrix")
        # llama-imatrix writes general.type=imatrix; the arch key gguf-py adds is ignored by the loader.
        writer.add_type("imatrix")
        writer.add_array("imatrix.datasets", list(matrix.datasets))
        writer.add_uint32("imatrix.chunk_count", int(matrix.chunks))
        writer.add_uint32("imatrix.chunk_size", int(chunk_size))
        for name in sorted(matrix.sums):
            # ne = [in_features, n_experts] and [1, n_experts]: numpy shapes are reversed.
            writer.add_tensor(f"{name}.in_sum2", matrix.sums[name].astype(np.float32).reshape(1, -1))
            writer.add_tensor(f"{name}.counts", np.array([[float(matrix.counts[name])]], dtype=np.float32))
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    return path


def read_imatrix(path: Path) -> ImportanceMatrix:
    """Read a GGUF imatrix file (ours or llama-imatrix's); one error line when it is not one."""
    from gguf import GGUFReader

    path = Path(path)
    if path.is_dir():
        raise TuneGGUFError(f"importance matrix {path} is a directory, not a file; give the imatrix.gguf file")
    if not path.is_file():
        raise TuneGGUFError(f"importance matrix {path} does not exist")
    try:
        reader = GGUFReader(str(path))
    except Exception as exc:  # not a GGUF: truncated, a legacy .dat, something else
        raise TuneGGUFError(f"{path}: not a GGUF importance matrix ({exc}); make it with llama-imatrix or tunegguf export") from None
    tensors = {t.name: t for t in reader.tensors}
    matrix = ImportanceMatrix()
    for name, tensor in tensors.items():
        if not name.endswith(".in_sum2"):
            continue
        weight = name[: -len(".in_sum2")]
        count = tensors.get(f"{weight}.counts")
        if count is None:
            raise TuneGGUFError(f"{path}: {weight} has sums but no counts; the file is damaged")
        sums = np.asarray(tensor.data, dtype=np.float64)
        counts = np.asarray(count.data, dtype=np.float64).reshape(-1)
        if sums.ndim == 2 and sums.shape[0] > 1:
            raise TuneGGUFError(f"{path}: {weight} has per-expert statistics; mixture-of-experts models are not supported")
        matrix.sums[weight] = sums.reshape(-1)
        matrix.counts[weight] = int(round(float(counts[0])))
    if not matrix.sums:
        raise TuneGGUFError(f"{path}: no <tensor>.in_sum2 entries; not an importance matrix")
    field_value = reader.fields.get("imatrix.datasets")
    if field_value is not None:
        matrix.datasets = [bytes(field_value.parts[i]).decode("utf-8", "replace") for i in field_value.data]
    chunks = reader.fields.get("imatrix.chunk_count")
    if chunks is not None:
        matrix.chunks = int(chunks.parts[-1][0])
    return matrix
