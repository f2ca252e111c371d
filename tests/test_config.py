"""Configs: defaults < YAML < --set, unknown keys and bad values rejected, shipped YAMLs valid."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tunegguf.config.run import RunConfig, load_run_config
from tunegguf.config.typed import from_dict, to_dict
from tunegguf.errors import TuneGGUFError

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_defaults_yaml_and_overrides_layer(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("finetune:\n  max_steps: 10\n  learning_rate: 5e-4\nmodel:\n  name: tiny-llama3\n")
    config = load_run_config(path, ["finetune.max_steps=3", "evaluate.modes=[labels]", "finetune.packing=false"])
    assert config.finetune.max_steps == 3  # --set beats the file
    assert config.finetune.learning_rate == 5e-4  # YAML's "5e-4" string read as a number
    assert config.model.name == "tiny-llama3"  # file beats defaults
    assert config.evaluate.modes == ["labels"]
    assert config.finetune.packing is False  # an explicit false still overrides
    assert config.export.quants == RunConfig().export.quants  # untouched default


@pytest.mark.parametrize("override,message", [
    ("finetune.max_step=3", r"unknown setting 'finetune.max_step' \(did you mean 'max_steps'\?\)"),
    ("finetun.max_steps=3", r"unknown setting 'finetun' \(did you mean 'finetune'\?\)"),
    ("finetune.engine=unslot", r"'unslot' is not one of .*did you mean 'unsloth'"),
    ("finetune.max_steps=many", r"finetune.max_steps: expected a whole number"),
    ("finetune.packing=maybe", r"finetune.packing: expected true or false"),
    ("export.quants=Q8_0", r"export.quants: expected a list"),
    ("model.max_seq_length=3", r"model.max_seq_length must be at least 16"),
    ("nonsense", r"expected KEY=VALUE"),
])
def test_bad_settings_are_one_line_errors(override, message):
    with pytest.raises(TuneGGUFError, match=message):
        load_run_config(None, [override])


def test_bad_yaml_file(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("finetune:\n  max_steps: [1,\n")
    with pytest.raises(TuneGGUFError, match="not valid YAML at line"):
        load_run_config(broken)
    with pytest.raises(TuneGGUFError, match="config file not found"):
        load_run_config(tmp_path / "missing.yaml")
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    with pytest.raises(TuneGGUFError, match="mapping of settings"):
        load_run_config(listing)


def test_resolved_config_round_trips():
    config = load_run_config(None, ["data.label_map={0: negative, 1: positive}"])
    again = from_dict(RunConfig, yaml.safe_load(yaml.safe_dump(to_dict(config))))
    assert again == config
    assert config.data.label_map == {"0": "negative", "1": "positive"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_shipped_config_is_valid_and_documented(path):
    text = path.read_text()
    config = load_run_config(path)
    assert text.lstrip().startswith("#"), "each shipped config starts with a comment"
    assert f"tunegguf run configs/{path.name}" in text, "each shipped config shows the command that runs it"
    assert config.run_dir.startswith("runs/")


def test_shipped_configs_cover_the_documented_setups():
    names = {p.name for p in CONFIGS}
    assert {"demo.yaml", "sst2_smollm2.yaml", "llama31_8b_sst2_t4.yaml", "llama31_8b_amazon_a100.yaml"} <= names
    t4 = load_run_config(Path(CONFIGS[0]).parent / "llama31_8b_sst2_t4.yaml")
    assert t4.prompt.format == "alpaca" and t4.model.load_in_4bit is True
    amazon = load_run_config(Path(CONFIGS[0]).parent / "llama31_8b_amazon_a100.yaml")
    assert amazon.data.balance == "undersample" and amazon.finetune.metric_for_best == "macro_f1"


def test_a_flag_goes_through_the_checks_of_its_yaml_key(tmp_path):
    """Command flags are applied before validation: a bad flag value is refused like the YAML's."""
    with pytest.raises(TuneGGUFError, match=r"^--limit: evaluate.limit must be at least 1"):
        load_run_config(None, [], flags={"evaluate.limit": ("--limit", 0)})
    with pytest.raises(TuneGGUFError, match=r"^--run-dir: run_dir: expected text"):
        load_run_config(None, [], flags={"run_dir": ("--run-dir", ["a"])})
    # Flags win over --set; a flag left out (None) leaves the file's value alone.
    config_file = tmp_path / "run.yaml"
    config_file.write_text("evaluate:\n  limit: 5\n  bootstrap: 7\n")
    config = load_run_config(config_file, ["evaluate.limit=6"], flags={"evaluate.limit": ("--limit", 9),
                                                                       "evaluate.bootstrap": ("--bootstrap", None)})
    assert config.evaluate.limit == 9 and config.evaluate.bootstrap == 7
