"""Weight-space parity on a synthetic model with a known delta (issue 11), and bad inputs.

The base sits exactly on the Q4_0 grid and the fine-tune delta is a quarter of a Q4_0 step
(but about four Q8_0 steps): Q4_0 must snap the merged weights back to the base (delta
erased), Q8_0 must keep it. Q/K rows are stored permuted, as the converter writes them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tunegguf.errors import TuneGGUFError
from tunegguf.export.weight_parity import (
    ERASED, KEPT, NO_DELTA, NOT_CHECKED, LayerParity, TensorParity, WeightParity, llama_permute, stored_erased,
    weight_parity,
)

HIDDEN, HEADS, KV_HEADS, VOCAB, FFN = 64, 4, 2, 32, 128
HF_NAMES = {
    "token_embd.weight": "model.embed_tokens.weight",
    "blk.0.attn_q.weight": "model.layers.0.self_attn.q_proj.weight",
    "blk.0.attn_k.weight": "model.layers.0.self_attn.k_proj.weight",
    "blk.0.ffn_up.weight": "model.layers.0.mlp.up_proj.weight",
    "blk.0.attn_norm.weight": "model.layers.0.input_layernorm.weight",
}
SHAPES = {
    "token_embd.weight": (VOCAB, HIDDEN), "blk.0.attn_q.weight": (HIDDEN, HIDDEN),
    "blk.0.attn_k.weight": (HIDDEN // HEADS * KV_HEADS, HIDDEN), "blk.0.ffn_up.weight": (FFN, HIDDEN),
    "blk.0.attn_norm.weight": (HIDDEN,),
}


def _on_q4_0_grid(x: np.ndarray) -> np.ndarray:
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize, quantize

    return dequantize(quantize(x, GGMLQuantizationType.Q4_0), GGMLQuantizationType.Q4_0).reshape(x.shape)


def _small_delta(base: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A quarter of each block's Q4_0 step, random sign; zero on the block maximum so the
    block scale (and with it the whole Q4_0 grid) stays the base's."""
    blocks = base.reshape(-1, 32)
    step = np.abs(blocks).max(axis=1, keepdims=True) / 8
    delta = 0.25 * step * rng.choice([-1.0, 1.0], size=blocks.shape)
    delta[np.abs(blocks) == np.abs(blocks).max(axis=1, keepdims=True)] = 0.0
    return delta.reshape(base.shape).astype(np.float32)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    rng = np.random.default_rng(0)
    base, merged = {}, {}
    for name, shape in SHAPES.items():
        if len(shape) == 1:
            base[name] = merged[name] = np.ones(shape, dtype=np.float32)
            continue
        base[name] = _on_q4_0_grid(rng.normal(0, 0.05, size=shape).astype(np.float32))
        merged[name] = base[name] + _small_delta(base[name], rng)
    root = tmp_path_factory.mktemp("parity")
    return root, base, merged


def _write_hf(directory: Path, tensors: dict[str, np.ndarray], *, layers: int = 1, drop: str | None = None,
              source_quant: str | None = None) -> Path:
    import torch
    from safetensors.torch import save_file

    directory.mkdir(parents=True, exist_ok=True)
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "num_hidden_layers": layers,
        "hidden_size": HIDDEN, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "tie_word_embeddings": True, "vocab_size": VOCAB,
    }
    (directory / "config.json").write_text(json.dumps(config))
    state = {HF_NAMES[k]: torch.from_numpy(np.ascontiguousarray(v)) for k, v in tensors.items() if HF_NAMES[k] != drop}
    save_file(state, str(directory / "model.safetensors"))
    if source_quant:
        (directory / "tunegguf_source.json").write_text(json.dumps({"source_quant": source_quant}))
    return directory


def _write_gguf(path: Path, tensors: dict[str, np.ndarray], qtype_name: str, *, blocks: int = 1,
                skip: str | None = None, reshape: dict[str, tuple] | None = None) -> Path:
    import gguf
    from gguf.quants import quantize

    qtype = gguf.GGMLQuantizationType[qtype_name]
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(blocks)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_file_type(gguf.LlamaFileType[f"MOSTLY_{qtype_name}"])
    for name, value in tensors.items():
        if name == skip:
            continue
        if name == "blk.0.attn_q.weight":  # the converter's layout for llama models
            value = llama_permute(value, HEADS, HEADS)
        elif name == "blk.0.attn_k.weight":
            value = llama_permute(value, HEADS, KV_HEADS)
        if reshape and name in reshape:
            value = value.reshape(reshape[name])
        if value.ndim == 1:
            writer.add_tensor(name, value.astype(np.float32))
        else:
            writer.add_tensor(name, quantize(np.ascontiguousarray(value), qtype), raw_dtype=qtype)
    writer.add_tensor("rope_freqs.weight", np.ones(8, dtype=np.float32))  # made by the converter, no HF twin
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def dirs(synthetic):
    root, base, merged = synthetic
    return _write_hf(root / "base", base, source_quant="Q4_0"), _write_hf(root / "merged", merged)


def test_q8_0_keeps_the_fine_tune(synthetic, dirs):
    root, _, merged = synthetic
    parity = weight_parity(_write_gguf(root / "q8.gguf", merged, "Q8_0"), base_dir=dirs[0], merged_dir=dirs[1])
    assert parity.verdict == KEPT
    assert parity.kept > 0.95 and parity.delta_snr > 2
    assert parity.file_type == "Q8_0"
    by_name = {t.gguf_name: t for t in parity.tensors}
    # Q and K are stored permuted; compared in the wrong layout they would look unrelated.
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
        assert by_name[name].kept > 0.9 and by_name[name].rel_error < 0.05, name
    assert parity.not_compared == ["rope_freqs.weight"]
    assert {layer.layer for layer in parity.layers} == {"0", "other"}
    assert parity.base_source_quant == "Q4_0" and not parity.warnings


def test_q4_0_erases_a_delta_smaller_than_its_step(synthetic, dirs):
    root, _, merged = synthetic
    parity = weight_parity(_write_gguf(root / "q4.gguf", merged, "Q4_0"), base_dir=dirs[0], merged_dir=dirs[1],
                           erased_threshold=0.5)
    assert parity.verdict == ERASED
    assert abs(parity.kept) < 0.02
    assert all(abs(t.kept) < 0.02 for t in parity.tensors if t.kept is not None)
    assert any("dequantized from Q4_0" in w for w in parity.warnings)  # tunegguf_source.json of the base
    data = parity.to_dict()
    json.dumps(data, allow_nan=False)  # the manifest stays strict JSON
    assert data["verdict"] == ERASED and len(data["tensors"]) == len(HF_NAMES)


def test_merged_equal_to_base_has_no_delta(synthetic, dirs):
    root, base, _ = synthetic
    parity = weight_parity(_write_gguf(root / "base-q8.gguf", base, "Q8_0"), base_dir=dirs[0], merged_dir=dirs[0])
    assert parity.verdict == NO_DELTA and parity.kept is None


def test_types_the_gguf_package_cannot_dequantize_are_listed(synthetic, dirs, monkeypatch):
    import gguf.quants

    root, _, merged = synthetic
    path = _write_gguf(root / "q8-unreadable.gguf", merged, "Q8_0")
    monkeypatch.delitem(gguf.quants._type_traits, gguf.GGMLQuantizationType.Q8_0)
    parity = weight_parity(path, base_dir=dirs[0], merged_dir=dirs[1])
    assert {item["tensor"] for item in parity.not_checked} == set(HF_NAMES) - {"blk.0.attn_norm.weight"}
    assert all(item["type"] == "Q8_0" for item in parity.not_checked)
    # Only the (unchanged) norm was readable: no verdict is claimed from it.
    assert parity.kept is None and parity.verdict == NOT_CHECKED


def test_different_block_count_is_a_different_architecture(synthetic, dirs):
    root, _, merged = synthetic
    path = _write_gguf(root / "two-blocks.gguf", merged, "Q8_0", blocks=2)
    with pytest.raises(TuneGGUFError, match="different architecture: two-blocks.gguf has 2 blocks"):
        weight_parity(path, base_dir=dirs[0], merged_dir=dirs[1])


def test_shape_mismatch_names_the_tensor(synthetic, dirs):
    root, _, merged = synthetic
    path = _write_gguf(root / "reshaped.gguf", merged, "Q8_0", reshape={"blk.0.ffn_up.weight": (HIDDEN, FFN)})
    with pytest.raises(TuneGGUFError, match=r"shape mismatch at blk\.0\.ffn_up\.weight \(model\.layers\.0\.mlp\.up_proj\.weight\)"):
        weight_parity(path, base_dir=dirs[0], merged_dir=dirs[1])


def test_missing_tensor_in_the_gguf_names_it(synthetic, dirs):
    root, _, merged = synthetic
    path = _write_gguf(root / "no-up.gguf", merged, "Q8_0", skip="blk.0.ffn_up.weight")
    with pytest.raises(TuneGGUFError, match=r"missing tensor: no-up.gguf has no blk\.0\.ffn_up\.weight"):
        weight_parity(path, base_dir=dirs[0], merged_dir=dirs[1])


def test_base_merged_mismatch_names_the_tensor(synthetic, dirs, tmp_path):
    root, _, merged = synthetic
    path = _write_gguf(root / "q8-b.gguf", merged, "Q8_0")
    partial = _write_hf(tmp_path / "partial", merged, drop="model.layers.0.mlp.up_proj.weight")
    with pytest.raises(TuneGGUFError, match=r"base/merged mismatch: model\.layers\.0\.mlp\.up_proj\.weight"):
        weight_parity(path, base_dir=dirs[0], merged_dir=partial)
    with pytest.raises(TuneGGUFError, match="no config.json"):
        weight_parity(path, base_dir=dirs[0], merged_dir=tmp_path)


def test_not_a_gguf_is_one_line(dirs, tmp_path):
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(np.random.default_rng(1).bytes(4096))
    with pytest.raises(TuneGGUFError, match="not a readable GGUF file") as exc:
        weight_parity(junk, base_dir=dirs[0], merged_dir=dirs[1])
    assert "\n" not in str(exc.value)


def _importance(path: Path, first_half: float, second_half: float) -> Path:
    from tunegguf.export.imatrix import ImportanceMatrix, write_imatrix

    columns = np.array([first_half] * (HIDDEN // 2) + [second_half] * (HIDDEN // 2))
    names = [n for n, shape in SHAPES.items() if len(shape) == 2]
    return write_imatrix(path, ImportanceMatrix(sums={n: columns for n in names}, counts={n: 1 for n in names}))


def test_activation_weighting_judges_the_columns_that_matter(synthetic, dirs):
    # The delta survives in input columns 0-31 and is erased in 32-63: plain "kept" is about
    # one half; weighted by the inputs' importance it is ~1 or ~0 depending on which half matters.
    root, base, merged = synthetic
    half = {n: (np.concatenate([merged[n][:, :HIDDEN // 2], base[n][:, HIDDEN // 2:]], axis=1)
                if merged[n].ndim == 2 else merged[n]) for n in merged}
    gguf_path = _write_gguf(root / "half.gguf", half, "Q8_0")
    plain = weight_parity(gguf_path, base_dir=dirs[0], merged_dir=dirs[1], erased_threshold=0.6)
    assert 0.4 < plain.kept < 0.6 and plain.verdict == ERASED and plain.weighted is None

    kept_half_matters = weight_parity(gguf_path, base_dir=dirs[0], merged_dir=dirs[1], erased_threshold=0.6,
                                      imatrix=_importance(root / "first.gguf", 1.0, 1e-3))
    assert kept_half_matters.weighted["kept"] > 0.95 and kept_half_matters.verdict == KEPT
    assert kept_half_matters.kept == pytest.approx(plain.kept)  # the plain share is still reported
    assert kept_half_matters.imatrix_sha256 and "activation-weighted" in kept_half_matters.summary()
    assert all(layer.kept_weighted is not None for layer in kept_half_matters.layers if layer.layer == "0")

    erased_half_matters = weight_parity(gguf_path, base_dir=dirs[0], merged_dir=dirs[1], erased_threshold=0.6,
                                        imatrix=_importance(root / "second.gguf", 1e-3, 1.0))
    assert erased_half_matters.weighted["kept"] < 0.05 and erased_half_matters.verdict == ERASED
    json.dumps(erased_half_matters.to_dict(), allow_nan=False)


# ---- serialisation ------------------------------------------------------------------------


def test_the_erased_flag_follows_the_verdict(synthetic, dirs, monkeypatch):
    root, base, merged = synthetic
    q8 = weight_parity(_write_gguf(root / "q8-flag.gguf", merged, "Q8_0"), base_dir=dirs[0], merged_dir=dirs[1])
    q4 = weight_parity(_write_gguf(root / "q4-flag.gguf", merged, "Q4_0"), base_dir=dirs[0], merged_dir=dirs[1])
    same = weight_parity(_write_gguf(root / "base-flag.gguf", base, "Q8_0"), base_dir=dirs[0], merged_dir=dirs[0])
    assert (q8.verdict, q8.erased) == (KEPT, False) and (q4.verdict, q4.erased) == (ERASED, True)
    assert (same.verdict, same.erased) == (NO_DELTA, False)
    import gguf.quants

    monkeypatch.delitem(gguf.quants._type_traits, gguf.GGMLQuantizationType.Q8_0)
    unreadable = weight_parity(root / "q8-flag.gguf", base_dir=dirs[0], merged_dir=dirs[1])
    assert (unreadable.verdict, unreadable.erased) == (NOT_CHECKED, None)


def test_to_dict_and_from_dict_round_trip(synthetic, dirs):
    root, _, merged = synthetic
    parity = weight_parity(_write_gguf(root / "q4-trip.gguf", merged, "Q4_0"), base_dir=dirs[0], merged_dir=dirs[1],
                           imatrix=_importance(root / "trip.gguf", 1.0, 1.0))
    assert parity.tensors and parity.layers and parity.weighted and parity.tensor_types
    data = json.loads(json.dumps(parity.to_dict(), allow_nan=False))  # through the manifest's JSON
    assert data["erased"] is True
    assert WeightParity.from_dict(data) == parity
    summary = WeightParity.from_dict(parity.to_dict(per_tensor=False))
    assert summary.tensors == [] and summary.layers == parity.layers and summary.verdict == parity.verdict


def test_an_infinite_snr_survives_the_round_trip():
    # A quantized tensor equal to the merged one: no error, an infinite SNR, stored as "inf".
    inf = float("inf")
    shares = {"kept": 1.0, "rel_error": 0.0, "delta_snr": inf, "delta_norm": 0.5}
    parity = WeightParity("m.gguf", "F32", **shares, verdict=KEPT, erased_threshold=0.5, erased=False,
                          layers=[LayerParity(layer="0", **shares, kept_weighted=1.0)],
                          tensors=[TensorParity(gguf_name="blk.0.ffn_up.weight", hf_name="up", type="F32", **shares)],
                          weighted=dict(shares))
    data = json.loads(json.dumps(parity.to_dict(), allow_nan=False))
    assert data["delta_snr"] == data["layers"][0]["delta_snr"] == data["weighted"]["delta_snr"] == "inf"
    assert WeightParity.from_dict(data) == parity


def test_an_older_entry_without_the_flag_reads_it_from_the_verdict():
    old = {"gguf_path": "m.gguf", "file_type": "Q4_1", "kept": 0.06, "rel_error": 0.007, "delta_snr": 0.8,
           "delta_norm": 1.0, "verdict": ERASED, "erased_threshold": 0.5, "layers": []}
    assert WeightParity.from_dict(old).erased is True
    assert WeightParity.from_dict({**old, "verdict": KEPT}).erased is False
    assert WeightParity.from_dict({**old, "verdict": NOT_CHECKED, "kept": None}).erased is None
    assert stored_erased({"verdict": NO_DELTA}) is False and stored_erased({}) is None
    assert stored_erased({"verdict": KEPT, "erased": True}) is True  # the stored flag wins
