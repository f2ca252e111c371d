"""Fine-tune stage without training: loss masks, settings, run-directory rules, CLI wiring."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.finetune import FinetuneConfig, FinetuneResult, run
from tunegguf.finetune.callbacks import STATE_FILE, LoopState, describe_eval, improved, metric_value
from tunegguf.finetune.rows import build_rows
from tunegguf.finetune.rundir import ADAPTER_INFO, RunDir, fingerprint
from tunegguf.models import ModelConfig
from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens, label_token_ids

LABELS = ["negative", "positive"]
TRAIN = [
    Example(id="r1", text="a gorgeous , witty film", label="positive"),
    Example(id="r2", text="dull , lifeless and far too long", label="negative"),
    Example(id="r3", text="Größe 日本語 emoji 😀 and digits 12345", label="positive"),
]


def _tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(path))


@pytest.fixture(scope="module", params=["smollm2", "tiny_llama3"])
def tokenizer(request):
    return _tokenizer(request.getfixturevalue(f"{request.param}_dir"))


def test_loss_mask_covers_exactly_the_label_token_and_eos(tokenizer):
    renderer = PromptRenderer(PromptConfig(), TemplateTokens.from_hf_tokenizer(tokenizer), LABELS)
    built = build_rows(tokenizer, renderer, TRAIN, max_seq_length=512)
    assert built.dropped_too_long == 0 and len(built.rows) == len(TRAIN)
    encode = lambda text: tokenizer(text, add_special_tokens=False)["input_ids"]  # noqa: E731
    for example, row in zip(TRAIN, built.rows):
        prompt = renderer.render(example).prompt
        prompt_ids = encode(prompt)
        ids, mask = row["input_ids"], row["completion_mask"]
        assert len(ids) == len(mask)
        # Everything up to the answer is the prompt, tokenized exactly as the backends do.
        assert ids[: len(prompt_ids)] == prompt_ids
        assert mask[: len(prompt_ids)] == [0] * len(prompt_ids)
        with_loss = [i for i, m in zip(ids, mask) if m]
        # The loss lands on the label's first token (the id the scorer reads) and on EOS.
        label_id = label_token_ids(encode, prompt, renderer.words)[LABELS.index(example.label)]
        assert with_loss == [label_id, tokenizer.eos_token_id]
        assert tokenizer.decode(with_loss) == f"{example.label}{tokenizer.eos_token}"
        # Llama 3's BOS is written once by the template, never added again by the tokenizer.
        if TemplateTokens.from_hf_tokenizer(tokenizer).add_bos:
            assert ids[0] == tokenizer.bos_token_id and ids.count(tokenizer.bos_token_id) == 1


def test_rows_longer_than_max_seq_length_are_dropped_and_counted(tokenizer):
    renderer = PromptRenderer(PromptConfig(), TemplateTokens.from_hf_tokenizer(tokenizer), LABELS)
    long = Example(id="long", text="word " * 300, label="negative")
    short_len = len(build_rows(tokenizer, renderer, TRAIN[:1], 512).rows[0]["input_ids"])
    built = build_rows(tokenizer, renderer, [TRAIN[0], long], max_seq_length=short_len + 5)
    assert built.dropped_too_long == 1 and len(built.rows) == 1
    assert "1 of 2 train rows are longer than model.max_seq_length" in built.notes[0]
    with pytest.raises(TuneGGUFError, match="every train row is longer"):
        build_rows(tokenizer, renderer, [long], max_seq_length=short_len + 5)


class _WordTokenizer:
    """One id per whitespace-separated word: merges an answer glued to the prompt's last word."""

    def __call__(self, texts, add_special_tokens=False):
        vocab: dict[str, int] = {}
        return {"input_ids": [[vocab.setdefault(w, len(vocab)) for w in t.split()] for t in texts]}


def test_answer_merging_into_the_prompt_and_missing_labels_are_refused():
    glued = TemplateTokens(chat_template="{% for m in messages %}{{ m['content'] }}{% endfor %}",
                           bos_token=None, eos_token="</s>")
    renderer = PromptRenderer(PromptConfig(instruction="Say:"), glued, LABELS)
    with pytest.raises(TuneGGUFError, match="row r1: the answer's first token merges"):
        build_rows(_WordTokenizer(), renderer, TRAIN[:1], 512)
    unlabeled = Example(id="u9", text="no label here")
    with pytest.raises(TuneGGUFError, match="row u9: nothing to learn"):
        build_rows(_WordTokenizer(), renderer, [unlabeled], 512)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"batch_size": 0}, "finetune.batch_size must be at least 1"),
        ({"lora_r": 0}, "finetune.lora_r must be at least 1"),
        ({"max_steps": 0, "epochs": 0}, "finetune.epochs must be above 0"),
        ({"learning_rate": 0}, "finetune.learning_rate must be above 0"),
        ({"eval_every": -1}, "finetune.eval_every must not be negative"),
        ({"target_modules": []}, "finetune.target_modules is empty"),
        ({"report_to": ["mlflow"]}, "finetune.report_to"),
        ({"collapse_threshold": 1.5}, "finetune.collapse_threshold"),
    ],
)
def test_bad_settings_name_the_setting(settings, message):
    from tunegguf.config.run import load_run_config

    overrides = [f"finetune.{k}={json.dumps(v)}" for k, v in settings.items()]
    with pytest.raises(TuneGGUFError, match=message.replace(".", r"\.")):
        load_run_config(None, overrides)


def test_unknown_setting_suggests_the_closest():
    from tunegguf.config.run import load_run_config

    with pytest.raises(TuneGGUFError, match="unknown setting 'finetune.lora_rank'.*did you mean 'lora_r'"):
        load_run_config(None, ["finetune.lora_rank=8"])


def test_precision_on_this_machine():
    import torch

    from tunegguf.finetune.loading import resolve_precision

    if torch.cuda.is_available():
        assert resolve_precision(ModelConfig()).load_in_4bit is True
        return
    auto = resolve_precision(ModelConfig())
    assert (auto.device, auto.dtype, auto.load_in_4bit) == ("cpu", "float32", False)
    with pytest.raises(TuneGGUFError, match="load_in_4bit is true but no CUDA GPU"):
        resolve_precision(ModelConfig(load_in_4bit=True))
    with pytest.raises(TuneGGUFError, match="float16 is for GPUs"):
        resolve_precision(ModelConfig(dtype="float16"))


def test_four_bit_without_gpu_is_refused_by_run(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU: 4-bit is allowed")
    with pytest.raises(TuneGGUFError, match="4-bit QLoRA needs one"):
        run(FinetuneConfig(), model=ModelConfig(name="tiny-llama3", load_in_4bit=True), prompt=PromptConfig(),
            train=TRAIN, validation=TRAIN, labels=LABELS, out_dir=tmp_path / "ft")
    assert not (tmp_path / "ft" / "adapter").exists()


def test_out_of_memory_says_what_to_lower(tmp_path, monkeypatch):
    import torch

    import tunegguf.finetune.loading as loading

    def out_of_memory(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loading, "load_for_training", out_of_memory)
    config = FinetuneConfig(batch_size=32, gradient_accumulation_steps=2, lora_r=64)
    lines: list[str] = []
    with pytest.raises(TuneGGUFError) as caught:
        run(config, model=ModelConfig(name="tiny-llama3", max_seq_length=1024), prompt=PromptConfig(),
            train=TRAIN, validation=TRAIN, labels=LABELS, out_dir=tmp_path / "ft",
            class_weights={"negative": 2.0, "positive": 0.5}, log=lines.append)
    assert any(line.startswith("note: class weights are not applied") for line in lines)
    message = str(caught.value)
    assert "out of GPU memory while loading the model" in message
    for hint in ("finetune.batch_size (now 32)", "effective batch of 64", "model.max_seq_length (now 1024)",
                 "finetune.lora_r (now 64)", "gradient_accumulation_steps"):
        assert hint in message


def _args(out_dir: Path, config: FinetuneConfig | None = None) -> dict:
    return dict(model=ModelConfig(name="tiny-llama3"), prompt=PromptConfig(), train=TRAIN, validation=TRAIN[:2],
                labels=LABELS, out_dir=out_dir)


def _fake_finished(out_dir: Path, config: FinetuneConfig) -> str:
    args = _args(out_dir)
    fp, parts = fingerprint(config=config, model=args["model"], prompt=args["prompt"], labels=LABELS,
                            train=TRAIN, validation=TRAIN[:2], data_fingerprint=None)
    out_dir.mkdir(parents=True)
    (out_dir / "run.json").write_text(json.dumps({"fingerprint": fp, "settings": parts}))
    (out_dir / "adapter").mkdir()
    result = {"best_step": 7, "best_metric": 0.8, "baseline": None, "final_metrics": {"accuracy": 0.8},
              "engine": "unsloth", "train_seconds": 1.0, "steps": 8}
    (out_dir / "adapter" / ADAPTER_INFO).write_text(json.dumps({"result": result}))
    return fp


def test_finished_run_is_reused_when_settings_match_and_refused_otherwise(tmp_path):
    config = FinetuneConfig(max_steps=8)
    _fake_finished(tmp_path / "ft", config)
    reused = run(config, **_args(tmp_path / "ft"))
    assert isinstance(reused, FinetuneResult) and reused.skipped
    assert (reused.best_step, reused.steps, reused.adapter_dir) == (7, 8, tmp_path / "ft" / "adapter")
    with pytest.raises(TuneGGUFError, match="holds a finished fine-tune made with other settings.*--overwrite"):
        run(FinetuneConfig(max_steps=9), **_args(tmp_path / "ft"))
    changed_data = _args(tmp_path / "ft")
    changed_data["train"] = TRAIN[:2]
    with pytest.raises(TuneGGUFError, match="finished fine-tune"):
        run(config, **changed_data)


def test_unfinished_run_needs_resume_or_overwrite(tmp_path):
    out = tmp_path / "ft"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    (out / "run.json").write_text(json.dumps({"fingerprint": "0000"}))
    with pytest.raises(TuneGGUFError, match="unfinished fine-tune; pass --resume"):
        run(FinetuneConfig(), **_args(out))
    with pytest.raises(TuneGGUFError, match="cannot resume .* settings or data differ"):
        run(FinetuneConfig(), **_args(out), resume=True)


def test_empty_or_unlabelled_training_data_is_refused(tmp_path):
    args = _args(tmp_path / "ft")
    args["train"] = []
    with pytest.raises(TuneGGUFError, match="the train split is empty"):
        run(FinetuneConfig(), **args)
    args = _args(tmp_path / "ft")
    args["labels"] = []
    with pytest.raises(TuneGGUFError, match="no labels given"):
        run(FinetuneConfig(), **args)


def test_latest_whole_checkpoint_and_history_truncation(tmp_path):
    rd = RunDir(tmp_path)
    for step, whole in ((2, True), (4, True), (6, False)):
        path = rd.checkpoints / f"checkpoint-{step}"
        path.mkdir(parents=True)
        if whole:
            (path / STATE_FILE).write_text(json.dumps({"best_step": step, "best_metric": 0.5, "bad_evals": 1}))
    assert rd.latest_checkpoint() == rd.checkpoints / "checkpoint-4"
    state = LoopState.load(rd.latest_checkpoint() / STATE_FILE)
    assert (state.best_step, state.bad_evals) == (4, 1)
    rd.metrics.write_text("".join(json.dumps({"kind": "train", "step": s}) + "\n" for s in range(0, 7)))
    assert rd.truncate_history(4) == 2
    assert [json.loads(line)["step"] for line in rd.metrics.read_text().splitlines()] == [0, 1, 2, 3, 4]


def test_best_metric_direction_and_eval_line():
    assert improved(0.8, 0.7, "macro_f1") and not improved(0.7, 0.8, "accuracy")
    assert improved(0.3, 0.4, "loss") and not improved(0.5, 0.4, "loss") and improved(1.0, None, "loss")
    assert metric_value({"eval_loss": 0.25}, "loss") == 0.25
    assert metric_value({"eval_loss": float("nan")}, "loss") is None
    row = {"accuracy": 0.9, "macro_f1": 0.89, "per_class_recall": {"negative": 0.8, "positive": 1.0},
           "n": 10, "eval_seconds": 1.2}
    line = describe_eval("step 20", row, "macro_f1", is_best=True)
    assert "accuracy 0.900" in line and "negative 80%" in line and "best macro_f1" in line


def test_cli_help_is_instant_and_lists_options():
    import subprocess
    import sys

    code = ("import sys; from tunegguf.cli.finetune import finetune_command; "
            "heavy = [m for m in ('torch', 'transformers', 'unsloth', 'trl') if m in sys.modules]; "
            "print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
    from tunegguf.cli.finetune import finetune_command

    result = CliRunner().invoke(finetune_command, ["--help"])
    assert result.exit_code == 0
    for option in ("--config", "--set", "--resume", "--overwrite", "--run-dir"):
        assert option in result.output


def test_cli_prepares_data_and_passes_settings(tmp_path, monkeypatch):
    import tunegguf.data
    import tunegguf.finetune
    from tunegguf.cli.finetune import finetune_command

    calls = {}

    class Prepared:
        labels = LABELS
        manifest = {"fingerprint": "abc", "splits": {}}
        class_weights = None

        def load(self, split):
            return {"train": TRAIN, "validation": TRAIN[:1]}[split]

    def fake_prepare(config, out_dir):
        calls["data_dir"] = Path(out_dir)
        return Prepared()

    def fake_run(config, **kwargs):
        calls.update(config=config, **kwargs)
        return FinetuneResult(adapter_dir=tmp_path / "a", best_step=3, best_metric=0.9, baseline=None,
                              final_metrics={"accuracy": 0.9, "macro_f1": 0.9}, history_path=tmp_path / "m",
                              engine="peft", train_seconds=2.0, steps=3)

    monkeypatch.setattr(tunegguf.data, "prepare", fake_prepare)
    monkeypatch.setattr(tunegguf.finetune, "run", fake_run)
    result = CliRunner().invoke(finetune_command, [
        "--run-dir", str(tmp_path / "r"), "--set", "finetune.max_steps=3", "--set", "model.name=tiny-llama3",
        "--resume",
    ])
    assert result.exit_code == 0, result.output
    assert calls["data_dir"] == tmp_path / "r" / "data"
    assert calls["out_dir"] == tmp_path / "r" / "finetune"
    assert calls["config"].max_steps == 3 and calls["model"].name == "tiny-llama3"
    assert calls["resume"] is True and calls["overwrite"] is False
    assert calls["data_fingerprint"]["fingerprint"] == "abc"
    assert "best step 3: accuracy 0.900" in result.output


def test_unsloth_failure_falls_back_to_peft_only_when_auto(monkeypatch):
    import tunegguf.finetune.loading as loading
    from tunegguf.models import ResolvedModel

    def unsupported(*args, **kwargs):
        raise NotImplementedError("Unsloth: FooForCausalLM is not supported yet")

    def plain_peft(config, model_cfg, resolved, precision):
        return loading.Loaded(model="peft-model", tokenizer="tok", engine="peft", precision=precision)

    monkeypatch.setattr(loading, "_load_unsloth", unsupported)
    monkeypatch.setattr(loading, "_load_peft", plain_peft)
    precision = loading.Precision(device="cpu", dtype="float32", load_in_4bit=False)
    local = ResolvedModel(name="my-foo", path="/models/foo", is_local=True)
    loaded = loading.load_for_training(FinetuneConfig(engine="auto"), ModelConfig(), local, precision)
    assert loaded.engine == "peft" and loaded.model == "peft-model"
    assert "Unsloth cannot train 'my-foo' (NotImplementedError: Unsloth: FooForCausalLM" in loaded.notes[0]
    assert "falling back to Transformers + PEFT" in loaded.notes[0]
    with pytest.raises(TuneGGUFError, match="Unsloth cannot train 'my-foo'.*set finetune.engine to auto or peft"):
        loading.load_for_training(FinetuneConfig(engine="unsloth"), ModelConfig(), local, precision)

    def gated(*args, **kwargs):
        raise OSError("401 Client Error: access to model meta-llama/X is restricted (gated repo)")

    monkeypatch.setattr(loading, "_load_unsloth", gated)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    hub = ResolvedModel(name="meta-llama/X", path="meta-llama/X", is_local=False)
    with pytest.raises(TuneGGUFError, match="cannot download 'meta-llama/X'.*set HF_TOKEN"):
        loading.load_for_training(FinetuneConfig(engine="auto"), ModelConfig(), hub, precision)
