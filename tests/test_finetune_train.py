"""Real CPU fine-tunes of the two test models: adapters, history, engines, kill -9 and resume."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.finetune import FinetuneConfig, run
from tunegguf.io import read_json, read_jsonl
from tunegguf.models import ModelConfig
from tunegguf.prompts import PromptConfig

pytestmark = pytest.mark.slow

LABELS = ["negative", "positive"]
REPO = Path(__file__).resolve().parents[1]
POSITIVE = ["a wonderful film", "great acting and a moving story", "I loved every minute", "brilliant , warm and funny",
            "a joy to watch", "the best movie this year", "beautifully shot and acted", "smart , tender and true"]
NEGATIVE = ["a boring mess", "terrible acting and a silly plot", "I hated every minute", "dull , cold and lifeless",
            "a waste of time", "the worst movie this year", "badly shot and badly acted", "stupid , noisy and long"]
EVAL_KEYS = {"kind", "step", "epoch", "loss", "lr", "accuracy", "macro_f1", "per_class_recall",
             "prediction_distribution", "elapsed", "n", "collapsed", "is_best", "tokens_per_second"}


def examples(n: int, offset: int = 0) -> list[Example]:
    rows = []
    for i in range(offset, offset + n):
        words, label = (POSITIVE, "positive") if i % 2 == 0 else (NEGATIVE, "negative")
        rows.append(Example(id=f"e{i}", text=f"{words[(i // 2) % len(words)]} (seen {i})", label=label))
    return rows


def lora_tensors(adapter_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(adapter_dir / "adapter_model.safetensors"))


def check_finished_run(result, out_dir: Path, base_dir: Path, config: FinetuneConfig) -> None:
    """The outputs every finished run must have, and proof that training changed the adapter."""
    import torch
    from peft import LoraConfig, PeftModel, get_peft_model
    from transformers import AutoModelForCausalLM

    assert result.adapter_dir == out_dir / "adapter"
    for name in ("adapter_config.json", "adapter_model.safetensors", "tokenizer_config.json", "tunegguf_adapter.json"):
        assert (result.adapter_dir / name).is_file(), name
    assert (out_dir / "best" / "adapter_model.safetensors").is_file()
    assert not (out_dir / "checkpoints").exists()  # removed once finished
    info = read_json(result.adapter_dir / "tunegguf_adapter.json")
    assert info["base_model"]["path"] == str(base_dir)
    assert info["labels"] == LABELS and info["engine"] == result.engine
    assert info["result"]["best_step"] == result.best_step
    assert info["library_versions"]["peft"] and info["library_versions"]["trl"]
    assert info["config"]["finetune"]["lora_r"] == config.lora_r

    history = read_jsonl(result.history_path)
    baseline = [r for r in history if r["kind"] == "baseline"]
    evals = [r for r in history if r["kind"] == "eval"]
    trains = [r for r in history if r["kind"] == "train"]
    assert len(baseline) == 1 and baseline[0]["step"] == 0 and result.baseline["accuracy"] == baseline[0]["accuracy"]
    assert [r["step"] for r in trains] == list(range(1, result.steps + 1))
    assert all(r["tokens_per_second"] > 0 and r["lr"] is not None for r in trains)
    expected_eval_steps = sorted({s for s in range(config.eval_every, result.steps + 1, config.eval_every)} | {result.steps})
    assert [r["step"] for r in evals] == expected_eval_steps
    for row in evals:
        assert EVAL_KEYS <= set(row), EVAL_KEYS - set(row)
        assert set(row["per_class_recall"]) == set(LABELS)
        assert abs(sum(row["prediction_distribution"].values()) - 1) < 1e-9
    best = max(evals, key=lambda r: r["macro_f1"])
    assert result.best_metric == best["macro_f1"]
    assert result.final_metrics["step"] == result.best_step

    # Loadable as a PEFT adapter on its base, and different from a fresh LoRA init.
    trained = lora_tensors(result.adapter_dir)
    assert trained and all("lora_" in k for k in trained)
    base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    loaded = PeftModel.from_pretrained(base, str(result.adapter_dir))
    assert sum("lora_" in n for n, _ in loaded.named_parameters()) == len(trained)
    fresh_base = AutoModelForCausalLM.from_pretrained(str(base_dir), dtype=torch.float32)
    torch.manual_seed(config.seed)
    fresh = get_peft_model(fresh_base, LoraConfig(r=config.lora_r, lora_alpha=config.lora_alpha,
                                                  target_modules=config.target_modules, task_type="CAUSAL_LM"))
    init = {k.replace(".default", ""): v for k, v in fresh.state_dict().items() if "lora_" in k}
    assert set(init) == set(trained)
    for name, tensor in trained.items():
        assert not torch.equal(tensor, init[name]), f"{name} did not change"
        if "lora_B" in name:
            assert tensor.abs().sum() > 0  # B starts at zero


def test_smollm2_short_finetune(smollm2_dir, tmp_path):
    config = FinetuneConfig(max_steps=4, batch_size=4, eval_every=2, save_every=2, learning_rate=1e-3,
                            warmup_steps=0, lora_r=8, lora_alpha=16, eval_batch_size=8)
    out = tmp_path / "ft"
    result = run(config, model=ModelConfig(name="smollm2-135m", max_seq_length=256), prompt=PromptConfig(),
                 train=examples(40), validation=examples(8, offset=100), labels=LABELS, out_dir=out)
    assert result.engine == "unsloth" and result.steps == 4
    check_finished_run(result, out, smollm2_dir, config)


def test_tiny_llama3_finetune_then_rerun_is_skipped_or_refused(tiny_llama3_dir, tmp_path):
    config = FinetuneConfig(max_steps=6, batch_size=4, eval_every=3, save_every=3, learning_rate=1e-3, warmup_steps=0)
    out = tmp_path / "ft"
    args = dict(model=ModelConfig(name="tiny-llama3", max_seq_length=128), prompt=PromptConfig(),
                train=examples(24), validation=examples(8, offset=50), labels=LABELS, out_dir=out)
    result = run(config, **args)
    check_finished_run(result, out, tiny_llama3_dir, config)

    started = time.perf_counter()
    again = run(config, **args)
    assert again.skipped and again.best_step == result.best_step and time.perf_counter() - started < 5
    with pytest.raises(TuneGGUFError, match="finished fine-tune made with other settings"):
        run(FinetuneConfig(max_steps=7, batch_size=4, eval_every=3, save_every=3), **args)
    assert (out / "adapter" / "tunegguf_adapter.json").is_file()  # the refused run touched nothing


def test_trainer_puts_loss_on_answer_tokens_only(tiny_llama3_dir, tmp_path):
    from datasets import Dataset
    from transformers import AutoTokenizer

    from tunegguf.finetune.loading import load_for_training, resolve_precision
    from tunegguf.finetune.rows import build_rows
    from tunegguf.finetune.trainer import make_trainer, sft_config
    from tunegguf.models import resolve_model
    from tunegguf.prompts import PromptRenderer, TemplateTokens

    config, model_cfg = FinetuneConfig(engine="peft"), ModelConfig(name="tiny-llama3")
    precision = resolve_precision(model_cfg)
    loaded = load_for_training(config, model_cfg, resolve_model("tiny-llama3"), precision)
    tokenizer = AutoTokenizer.from_pretrained(str(tiny_llama3_dir))
    renderer = PromptRenderer(PromptConfig(), TemplateTokens.from_hf_tokenizer(tokenizer), LABELS)
    rows = build_rows(tokenizer, renderer, examples(4), 128).rows
    trainer = make_trainer(loaded, sft_config(config, model_cfg, precision, tmp_path), Dataset.from_list(rows))
    by_ids = {tuple(r["input_ids"]): r for r in trainer.train_dataset}
    for row in rows:
        labels = by_ids[tuple(row["input_ids"])]["labels"]
        expected = [i if m else -100 for i, m in zip(row["input_ids"], row["completion_mask"])]
        assert labels == expected
        assert sum(x != -100 for x in labels) == 2  # the label word's token and <|eot_id|>


def test_answer_positions_loss_equals_the_models_own_loss(tiny_llama3_dir):
    import torch
    from transformers import AutoModelForCausalLM

    from tunegguf.finetune.trainer import answer_positions_loss

    model = AutoModelForCausalLM.from_pretrained(str(tiny_llama3_dir), dtype=torch.float32)
    torch.manual_seed(0)
    ids = torch.randint(0, 5000, (3, 12))
    attention = torch.ones_like(ids)
    attention[2, 9:] = 0
    labels = torch.full_like(ids, -100)
    labels[0, 8:10], labels[1, 5:12], labels[2, 7:9] = ids[0, 8:10], ids[1, 5:12], ids[2, 7:9]
    inputs = {"input_ids": ids, "attention_mask": attention, "labels": labels}
    expected = model(**inputs).loss
    torch.testing.assert_close(answer_positions_loss(model, inputs), expected)
    # Under gradient accumulation the sum is divided by the tokens of the whole accumulated batch.
    torch.testing.assert_close(answer_positions_loss(model, inputs, 22), expected * 11 / 22)


def test_hub_model_missing_offline_is_one_clear_line(tmp_path):
    with pytest.raises(TuneGGUFError, match="not in the local Hugging Face cache"):
        run(FinetuneConfig(engine="peft"), model=ModelConfig(name="nobody-xyz/not-a-model"), prompt=PromptConfig(),
            train=examples(4), validation=[], labels=LABELS, out_dir=tmp_path / "ft")


def test_unknown_target_module_is_named(tmp_path):
    with pytest.raises(TuneGGUFError, match="no module named 'q_prj'.*did you mean 'q_proj'"):
        run(FinetuneConfig(engine="peft", target_modules=["q_prj"]), model=ModelConfig(name="tiny-llama3"),
            prompt=PromptConfig(), train=examples(4), validation=[], labels=LABELS, out_dir=tmp_path / "ft")


WORKER = textwrap.dedent('''
    import json, sys
    from pathlib import Path
    from tunegguf.config.typed import from_dict
    from tunegguf.data.example import Example
    from tunegguf.finetune import FinetuneConfig, run
    from tunegguf.models import ModelConfig
    from tunegguf.prompts import PromptConfig

    spec = json.loads(Path(sys.argv[1]).read_text())
    result = run(
        from_dict(FinetuneConfig, spec["finetune"]), model=ModelConfig(**spec["model"]), prompt=PromptConfig(),
        train=[Example(**e) for e in spec["train"]], validation=[Example(**e) for e in spec["validation"]],
        labels=spec["labels"], out_dir=Path(spec["out_dir"]), resume="--resume" in sys.argv,
    )
    print("RESULT " + json.dumps({"engine": result.engine, "steps": result.steps, "best_step": result.best_step,
                                  "unsloth_imported": "unsloth" in sys.modules}))
''')


def start_worker(tmp_path: Path, finetune: dict, *extra: str, env: dict | None = None) -> subprocess.Popen:
    spec = {
        "finetune": finetune, "model": {"name": "tiny-llama3", "max_seq_length": 128}, "labels": LABELS,
        "train": [e.to_dict() for e in examples(32)], "validation": [e.to_dict() for e in examples(6, offset=90)],
        "out_dir": str(tmp_path / "ft"),
    }
    (tmp_path / "spec.json").write_text(json.dumps(spec))
    (tmp_path / "worker.py").write_text(WORKER)
    return subprocess.Popen([sys.executable, str(tmp_path / "worker.py"), str(tmp_path / "spec.json"), *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})})


# Third-party lines that tell a tunegguf user nothing: silenced at their source.
NOISE = re.compile(r"torch/utils/_pytree|Failed to load .*\.so|^Unsloth 20\d\d|^Unsloth \(CPU\)|"
                   r"Building labels for|Truncating train dataset|Dropping fully masked", re.MULTILINE)


def worker_result(proc: subprocess.Popen, timeout: float = 240, *, clean: bool = False) -> dict:
    output, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, output[-3000:]
    # Unsloth patches transformers as it is imported; imported after it, its kernels may not apply.
    assert "Unsloth should be imported before" not in output, output[-3000:]
    if clean:
        assert NOISE.findall(output) == [], output[-3000:]
    line = next(x for x in output.splitlines() if x.startswith("RESULT "))
    return json.loads(line[len("RESULT "):])


def test_peft_engine_in_a_clean_process(tmp_path):
    proc = start_worker(tmp_path, {"engine": "peft", "max_steps": 4, "batch_size": 4, "eval_every": 2,
                                   "save_every": 0, "learning_rate": 1e-3, "warmup_steps": 0})
    result = worker_result(proc)
    assert result == {"engine": "peft", "steps": 4, "best_step": result["best_step"], "unsloth_imported": False}
    info = read_json(tmp_path / "ft" / "adapter" / "tunegguf_adapter.json")
    assert info["engine"] == "peft" and "unsloth" not in info["library_versions"]
    lora_b = [v for k, v in lora_tensors(tmp_path / "ft" / "adapter").items() if "lora_B" in k]
    assert lora_b and all(v.abs().sum() > 0 for v in lora_b)


def test_unsloth_is_imported_before_transformers_in_a_fresh_process(tmp_path):
    """With an empty cache the stage first builds the model with transformers: Unsloth
    must already be imported by then (worker_result fails on its import-order warning)."""
    proc = start_worker(tmp_path, {"engine": "auto", "max_steps": 1, "batch_size": 4, "eval_every": 0,
                                   "save_every": 0, "baseline": False, "warmup_steps": 0},
                        env={"TUNEGGUF_CACHE": str(tmp_path / "empty-cache")})
    result = worker_result(proc, clean=True)  # and no third-party noise on the terminal
    assert result["unsloth_imported"] and result["steps"] == 1
    assert (tmp_path / "empty-cache" / "models").is_dir(), "the model was built in this process"


def test_kill_during_training_then_resume(tmp_path):
    settings = {"max_steps": 20, "batch_size": 4, "eval_every": 4, "save_every": 4, "learning_rate": 1e-3,
                "warmup_steps": 0, "baseline": True}
    checkpoints = tmp_path / "ft" / "checkpoints"
    proc = start_worker(tmp_path, settings)
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        whole = [p for p in checkpoints.glob("checkpoint-*") if (p / "tunegguf_state.json").is_file()]
        if whole:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.communicate()[0][-2000:]
    os.kill(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    before = read_jsonl(tmp_path / "ft" / "metrics.jsonl")
    last_before = max(r["step"] for r in before)
    assert 0 < last_before < 20 and not (tmp_path / "ft" / "adapter").exists()

    # Without --resume an unfinished directory is refused (before any model is loaded).
    spec = json.loads((tmp_path / "spec.json").read_text())
    with pytest.raises(TuneGGUFError, match="unfinished fine-tune; pass --resume"):
        run(FinetuneConfig(**settings), model=ModelConfig(**spec["model"]), prompt=PromptConfig(),
            train=[Example(**e) for e in spec["train"]], validation=[Example(**e) for e in spec["validation"]],
            labels=LABELS, out_dir=tmp_path / "ft")

    result = worker_result(start_worker(tmp_path, settings, "--resume"))
    assert result["steps"] == 20
    history = read_jsonl(tmp_path / "ft" / "metrics.jsonl")
    resume_rows = [r for r in history if r["kind"] == "resume"]
    assert len(resume_rows) == 1
    resumed_from = resume_rows[0]["step"]
    assert resumed_from % 4 == 0 and 4 <= resumed_from < 20
    # The history keeps what came before the checkpoint, then continues after it, once each.
    assert [r for r in history if r["kind"] == "baseline"] == [r for r in before if r["kind"] == "baseline"]
    assert [r["step"] for r in history if r["kind"] == "train"] == list(range(1, 21))
    assert [r["step"] for r in history if r["kind"] == "eval"] == list(range(4, 21, 4))
    at = history.index(resume_rows[0])
    assert all(r["step"] <= resumed_from for r in history[:at]) and all(r["step"] > resumed_from for r in history[at + 1:])
    kept_before = [r for r in before if r["kind"] == "train" and r["step"] <= resumed_from]
    assert [r for r in history if r["kind"] == "train" and r["step"] <= resumed_from] == kept_before
    assert (tmp_path / "ft" / "adapter" / "adapter_model.safetensors").is_file()

    # Same seed, same batches: the resumed loss curve matches an uninterrupted run's.
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    assert worker_result(start_worker(reference_dir, settings))["steps"] == 20
    reference = {r["step"]: r["loss"] for r in read_jsonl(reference_dir / "ft" / "metrics.jsonl") if r["kind"] == "train"}
    resumed = {r["step"]: r["loss"] for r in history if r["kind"] == "train"}
    assert resumed == pytest.approx(reference, rel=1e-3)


def test_early_stopping_after_patience_evaluations(tmp_path):
    # A learning rate too small to move the predictions: no evaluation beats the first.
    config = FinetuneConfig(max_steps=12, batch_size=4, eval_every=2, save_every=0, learning_rate=1e-7,
                            warmup_steps=0, early_stopping_patience=2, baseline=False)
    result = run(config, model=ModelConfig(name="tiny-llama3", max_seq_length=128), prompt=PromptConfig(),
                 train=examples(24), validation=examples(6, offset=60), labels=LABELS, out_dir=tmp_path / "ft")
    evals = [r for r in read_jsonl(result.history_path) if r["kind"] == "eval"]
    assert result.stopped_early and result.steps == 6
    assert [r["step"] for r in evals] == [2, 4, 6] and [r["is_best"] for r in evals] == [True, False, False]
    assert result.best_step == 2 and read_json(tmp_path / "ft" / "best" / "best.json")["step"] == 2


def test_instruction_rows_pick_the_best_step_by_validation_loss(tmp_path):
    rows = [Example(id=f"i{i}", instruction="Repeat the word.", input=w, output=w)
            for i, w in enumerate(["apple", "river", "stone", "cloud"] * 4)]
    config = FinetuneConfig(max_steps=4, batch_size=4, eval_every=2, save_every=0, learning_rate=1e-3,
                            warmup_steps=0, metric_for_best="macro_f1")
    result = run(config, model=ModelConfig(name="tiny-llama3", max_seq_length=128), prompt=PromptConfig(),
                 train=rows, validation=rows[:4], labels=[], out_dir=tmp_path / "ft")
    assert result.metric_for_best == "loss" and any("validation loss" in w for w in result.warnings)
    history = read_jsonl(result.history_path)
    evals = [r for r in history if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [2, 4] and all(r["eval_loss"] > 0 for r in evals)
    assert "accuracy" not in evals[0]
    assert result.best_metric == min(r["eval_loss"] for r in evals)
    baseline = next(r for r in history if r["kind"] == "baseline")
    assert baseline["eval_loss"] > result.best_metric  # training lowered the answer loss


@pytest.mark.gpu
def test_qlora_on_cuda_uses_4bit_bf16_and_8bit_adam(smollm2_dir, tmp_path):
    import torch

    config = FinetuneConfig(max_steps=4, batch_size=4, eval_every=2, save_every=2, learning_rate=1e-3, warmup_steps=0)
    result = run(config, model=ModelConfig(name="smollm2-135m", max_seq_length=256), prompt=PromptConfig(),
                 train=examples(40), validation=examples(8, offset=100), labels=LABELS, out_dir=tmp_path / "ft")
    info = read_json(result.adapter_dir / "tunegguf_adapter.json")
    expected_dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
    assert info["precision"] == {"device": "cuda", "dtype": expected_dtype, "load_in_4bit": True}
    assert result.engine == "unsloth"
    check_finished_run(result, tmp_path / "ft", smollm2_dir, config)


def test_a_user_error_after_loading_is_the_last_line_printed(tmp_path):
    """No third-party line follows, or hides among, the error a user must read: the model
    is loaded (Unsloth's banner, torch's import warnings) before this mistake is found."""
    command = [str(Path(sys.executable).parent / "tunegguf"), "finetune", "--config", str(REPO / "configs" / "demo.yaml"),
               "--run-dir", str(tmp_path / "run"), "--set", "finetune.target_modules=[q_prj]"]
    proc = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: finetune.target_modules: the model has no module named 'q_prj'"), proc.stderr[-2000:]
    assert NOISE.findall(proc.stdout + proc.stderr) == [], proc.stdout[-2000:] + proc.stderr[-2000:]
