"""The shard-wise merge equals PEFT's merge_and_unload; bad adapters fail in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from test_export_support import mini_llama, random_adapter
from tunegguf.errors import TuneGGUFError
from tunegguf.export.merge import end_of_turn_ids, merge_adapter, plan_adapter


@pytest.fixture(scope="module")
def mini_base(tmp_path_factory, smollm2_dir) -> Path:
    return mini_llama(tmp_path_factory.mktemp("mini") / "base", smollm2_dir)


def _peft_merged(base_dir: Path, adapter_dir: Path) -> dict:
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.bfloat16)
    return PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload().state_dict()


def _ours(merged_dir: Path) -> dict:
    from safetensors.torch import load_file

    tensors = {}
    for shard in sorted(merged_dir.glob("*.safetensors")):
        tensors.update(load_file(str(shard)))
    return tensors


def _assert_same(ours: dict, theirs: dict) -> None:
    import torch

    assert set(ours) == set(theirs)
    for name, tensor in ours.items():
        assert tensor.dtype == theirs[name].dtype, name
        torch.testing.assert_close(tensor, theirs[name], rtol=0, atol=0, msg=lambda m: f"{name}: {m}")


def test_shardwise_merge_equals_peft_on_a_sharded_checkpoint(mini_base, tmp_path):
    import torch

    adapter = random_adapter(mini_base, tmp_path / "adapter", targets=["q_proj", "v_proj", "down_proj", "embed_tokens"],
                             modules_to_save=["lm_head"])
    result = merge_adapter(mini_base, adapter, tmp_path / "merged", progress=False)
    assert len(list(mini_base.glob("*.safetensors"))) == 2  # the shard path is exercised
    assert result.merged_tensors == 2 * 3 + 1 and result.replaced_tensors >= 1
    ours, theirs = _ours(result.merged_dir), _peft_merged(mini_base, adapter)
    _assert_same(ours, theirs)
    base = _ours(mini_base)
    changed = [k for k in ours if not torch.equal(ours[k], base[k])]
    assert "model.layers.0.self_attn.q_proj.weight" in changed and "model.embed_tokens.weight" in changed
    index = json.loads((result.merged_dir / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"]) == set(ours)


def test_rslora_and_alpha_pattern_scales_match_peft(mini_base, tmp_path):
    adapter = random_adapter(mini_base, tmp_path / "adapter", targets=["q_proj", "up_proj"], r=4, alpha=8,
                             use_rslora=True, alpha_pattern={"up_proj": 2})
    plan = plan_adapter(adapter)
    scales = {name.split(".")[-2]: delta.scale for name, delta in plan.deltas.items()}
    assert scales["q_proj"] == pytest.approx(8 / 2) and scales["up_proj"] == pytest.approx(2 / 2)
    result = merge_adapter(mini_base, adapter, tmp_path / "merged", progress=False)
    _assert_same(_ours(result.merged_dir), _peft_merged(mini_base, adapter))


def test_merged_dir_is_a_loadable_checkpoint_with_tokenizer_and_eos(mini_base, tmp_path):
    from transformers import AutoTokenizer, GenerationConfig

    adapter = random_adapter(mini_base, tmp_path / "adapter", targets=["q_proj"])
    merged = merge_adapter(mini_base, adapter, tmp_path / "merged", progress=False).merged_dir
    tokenizer = AutoTokenizer.from_pretrained(str(merged))
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.chat_template
    assert GenerationConfig.from_pretrained(str(merged)).eos_token_id == tokenizer.eos_token_id
    assert "quantization_config" not in json.loads((merged / "config.json").read_text())


def test_remerge_is_skipped_and_a_changed_adapter_is_merged_again(mini_base, tmp_path):
    adapter = random_adapter(mini_base, tmp_path / "adapter", targets=["q_proj"])
    first = merge_adapter(mini_base, adapter, tmp_path / "merged", progress=False)
    assert not first.skipped
    assert merge_adapter(mini_base, adapter, tmp_path / "merged", progress=False).skipped
    random_adapter(mini_base, adapter, targets=["q_proj"], seed=1)
    assert not merge_adapter(mini_base, adapter, tmp_path / "merged", progress=False).skipped


def test_adapter_for_another_shape_names_the_tensor(mini_base, tmp_path, smollm2_dir):
    other = mini_llama(tmp_path / "wider", smollm2_dir, hidden=64, shards=False)
    adapter = random_adapter(other, tmp_path / "adapter", targets=["q_proj"])
    with pytest.raises(TuneGGUFError, match=r"adapter/base mismatch at model\.layers\.0\.self_attn\.q_proj\.weight") as exc:
        merge_adapter(mini_base, adapter, tmp_path / "merged", progress=False)
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "merged").exists()  # nothing written


def test_adapter_for_missing_module_names_the_tensor(mini_base, tmp_path, smollm2_dir):
    deeper = mini_llama(tmp_path / "deeper", smollm2_dir, layers=3, shards=False)
    adapter = random_adapter(deeper, tmp_path / "adapter", targets=["q_proj"])
    with pytest.raises(TuneGGUFError, match=r"model\.layers\.2\.self_attn\.q_proj\.weight, which the base"):
        merge_adapter(mini_base, adapter, tmp_path / "merged", progress=False)


def test_dora_and_non_lora_adapters_are_refused(mini_base, tmp_path):
    adapter = random_adapter(mini_base, tmp_path / "dora", targets=["q_proj"], use_dora=True)
    with pytest.raises(TuneGGUFError, match="DoRA"):
        merge_adapter(mini_base, adapter, tmp_path / "merged", progress=False)
    broken = tmp_path / "broken"
    broken.mkdir()
    with pytest.raises(TuneGGUFError, match="no adapter_config.json"):
        plan_adapter(broken)
    shutil.copy(adapter / "adapter_config.json", broken / "adapter_config.json")
    config = json.loads((broken / "adapter_config.json").read_text())
    config.update(peft_type="IA3", use_dora=False)
    (broken / "adapter_config.json").write_text(json.dumps(config))
    with pytest.raises(TuneGGUFError, match="only LoRA"):
        plan_adapter(broken)


def test_insufficient_disk_is_refused_before_writing(mini_base, tmp_path, monkeypatch):
    import shutil as shutil_module
    from collections import namedtuple

    adapter = random_adapter(mini_base, tmp_path / "adapter", targets=["q_proj"])
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil_module, "disk_usage", lambda path: usage(10**12, 10**12, 1000))
    with pytest.raises(TuneGGUFError, match="not enough disk for the merged checkpoint"):
        merge_adapter(mini_base, adapter, tmp_path / "merged", progress=False)
    assert not (tmp_path / "merged").exists()


def test_generation_eos_keeps_a_llama3_list_and_uses_the_end_of_turn_token():
    assert end_of_turn_ids([128001, 128008, 128009], 128009) == [128001, 128008, 128009]
    assert end_of_turn_ids([128001, 128008], 128009) == [128009, 128001, 128008]
    assert end_of_turn_ids(0, 2) == 2
    assert end_of_turn_ids(None, 2) == 2


@pytest.mark.slow
def test_shardwise_merge_equals_peft_on_tiny_llama3(tiny_llama3_dir, tmp_path):
    adapter = random_adapter(tiny_llama3_dir, tmp_path / "adapter", r=8, alpha=16)
    result = merge_adapter(tiny_llama3_dir, adapter, tmp_path / "merged", progress=False)
    assert result.merged_tensors == 2 * 7
    _assert_same(_ours(result.merged_dir), _peft_merged(tiny_llama3_dir, adapter))
    generation = json.loads((result.merged_dir / "generation_config.json").read_text())
    assert generation["eos_token_id"] == [128001, 128008, 128009]  # the base's Llama 3 list
