"""Classify texts with an exported GGUF (or an HF checkpoint), exactly as the evaluator scores.

Same renderer, same label tokens, same backends: a prediction here equals the label-mode
prediction in the parity report for the same text and model.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from tunegguf.config.run import RunConfig, load_run_config
from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError, closest
from tunegguf.pipeline.stagebook import read_stages
from tunegguf.prompts import PromptConfig, PromptRenderer, TemplateTokens


@dataclass
class Prediction:
    text: str
    label: str
    probability: float
    probabilities: dict[str, float] = field(default_factory=dict)


@dataclass
class Predictor:
    """What a prediction needs: a model file or directory, the prompt, the labels."""

    model: Path
    prompt: PromptConfig
    labels: list[str]
    n_threads: int | None = None
    n_ctx: int = 2048
    """evaluate.n_ctx of the run: the context llama.cpp gets, and the most tokens a text's
    prompt may have (a longer one is refused, naming the text)."""
    config_path: Path | None = None
    """Where n_ctx came from, named in the message about a text over it."""

    @property
    def is_gguf(self) -> bool:
        return self.model.is_file() and self.model.suffix == ".gguf"


def predictor_from_run(run_dir: Path, model: str | None = None) -> Predictor:
    """Prompt and labels from a run directory; the model by quant name, path, or the default
    (Q4_K_M if it was exported, else the smallest verified file, else the merged checkpoint)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise TuneGGUFError(f"{run_dir} is not a tunegguf run directory (no config.yaml); run `tunegguf run` first")
    config: RunConfig = load_run_config(run_dir / "config.yaml")
    stages = read_stages(run_dir)  # paths resolved against the run directory, wherever we are
    labels = (stages.get("data") or {}).get("labels")
    if not labels:
        raise TuneGGUFError(f"{run_dir}: the data stage has not finished; run `tunegguf run` first")
    chosen = run_model(run_dir, stages.get("export") or {}, model)
    return Predictor(model=chosen, prompt=config.prompt, labels=list(labels), n_threads=config.evaluate.n_threads,
                     n_ctx=config.evaluate.n_ctx, config_path=run_dir / "config.yaml")


def run_model(run_dir: Path, exported: dict, model: str | None) -> Path:
    """The file or directory `--model` names in a run (a quant name in any case, or a path);
    without one Q4_K_M, else the smallest exported file, else the merged checkpoint."""
    files = {name: Path(path) for name, path in (exported.get("files") or {}).items()}
    present = {name: path for name, path in files.items() if path.is_file()}
    has = f"the run has {', '.join(present) or 'no GGUF file'}"
    if model is None:
        if present:
            return present.get("Q4_K_M") or min(present.values(), key=lambda p: p.stat().st_size)
        if files:
            raise TuneGGUFError(f"{run_dir}: the exported files ({', '.join(files)}) are gone from "
                                f"{run_dir / 'export'}; run `tunegguf run` again to re-export them")
        if exported.get("merged_dir") and Path(exported["merged_dir"]).is_dir():
            return Path(exported["merged_dir"])
        raise TuneGGUFError(f"{run_dir}: nothing exported yet; run `tunegguf run` (or give --model)")
    name = next((n for n in files if n.upper() == model.upper()), None)
    if name is not None and name in present:
        return present[name]
    if name is not None:
        raise TuneGGUFError(f"--model {model}: the file {files[name]} is gone; {has} (run `tunegguf run` again to re-export it)")
    if Path(model).exists():
        return Path(model)
    raise TuneGGUFError(f"--model {model!r} is neither a file nor an exported quant{closest(model, files)}; {has}")


def predict(predictor: Predictor, texts: Sequence[str], *, batch_size: int = 16) -> list[Prediction]:
    """Label-probability predictions for `texts` (one forward pass each, batched).

    Every text's prompt must fit predictor.n_ctx tokens; the first that does not is a
    one-line error naming it ("text 3": the third text given, or the third row of a file)."""
    from tunegguf.evaluate.backends import BackendOptions, BackendSpec, ModelKind, open_backend
    from tunegguf.evaluate.lengths import PromptLimit
    from tunegguf.evaluate.scoring import ModelScores, score_model

    texts = list(texts)
    if not texts:
        return []
    if predictor.is_gguf:
        tokens = TemplateTokens.from_gguf(predictor.model)
        spec = BackendSpec(ModelKind.GGUF, "gguf", predictor.model)
    else:
        from transformers import AutoTokenizer

        if not (predictor.model / "config.json").is_file():
            raise TuneGGUFError(f"{predictor.model} is neither a .gguf file nor an HF checkpoint directory")
        tokens = TemplateTokens.from_hf_tokenizer(AutoTokenizer.from_pretrained(predictor.model))
        spec = BackendSpec(ModelKind.HF, "hf", str(predictor.model))
    options = BackendOptions(batch_size=batch_size, n_threads=predictor.n_threads, n_ctx=predictor.n_ctx)
    where = f" in {predictor.config_path}" if predictor.config_path else " in a --config file"
    limit = PromptLimit(predictor.n_ctx, f"evaluate.n_ctx={predictor.n_ctx}", fix=f"raise evaluate.n_ctx{where}")

    renderer = PromptRenderer(predictor.prompt, tokens, predictor.labels)
    prompts = [renderer.render(Example(id=str(i), text=t)).prompt for i, t in enumerate(texts)]
    scores = score_model(
        lambda: open_backend(spec, options), ModelScores(name="predict", kind=spec.kind),
        prompts=prompts, labels=predictor.labels, words=renderer.words, modes=["labels"],
        batch_size=batch_size, max_new_tokens=1, prompt_limit=limit, row_names=[f"text {i + 1}" for i in range(len(texts))],
    )
    if scores.error:
        raise TuneGGUFError(scores.error)
    out = []
    for text, label, row in zip(texts, scores.pred_labels, scores.probs):
        probs = {name: float(p) for name, p in zip(predictor.labels, row)}
        out.append(Prediction(text=text, label=label, probability=probs[label], probabilities=probs))
    return out
