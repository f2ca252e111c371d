"""Classify texts with an exported GGUF (or an HF checkpoint), exactly as the evaluator scores.

Same renderer, same label tokens, same backends: a prediction here equals the label-mode
prediction in the parity report for the same text and model.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tunegguf.config.run import RunConfig, load_run_config
from tunegguf.errors import TuneGGUFError, closest
from tunegguf.pipeline.stagebook import read_stages
from tunegguf.prompts import PromptConfig


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
    extra_buffers: Any = "auto"
    """evaluate.llama_extra_buffers of the run (auto, true, false): llama.cpp's repacked CPU
    kernels, resolved by this host's probe when a GGUF is opened (evaluate.backends.kernels)."""
    chosen_because: str | None = None
    """Why this model (a run's default choice, or --model), printed by the CLI."""

    @property
    def is_gguf(self) -> bool:
        return self.model.is_file() and self.model.suffix == ".gguf"


def predictor_from_run(run_dir: Path, model: str | None = None) -> Predictor:
    """Prompt and labels from a run directory; the model by quant name, path, or the default
    (`choose_run_model`: the quant the last evaluation recommended, else Q4_K_M, else the
    smallest exported file, else the merged checkpoint)."""
    run_dir = Path(run_dir)
    if not (run_dir / "config.yaml").is_file():
        raise TuneGGUFError(f"{run_dir} is not a tunegguf run directory (no config.yaml); run `tunegguf run` first")
    config: RunConfig = load_run_config(run_dir / "config.yaml")
    stages = read_stages(run_dir)  # paths resolved against the run directory, wherever we are
    labels = (stages.get("data") or {}).get("labels")
    if not labels:
        raise TuneGGUFError(f"{run_dir}: the data stage has not finished; run `tunegguf run` first")
    chosen, why = choose_run_model(run_dir, stages.get("export") or {}, model, stages.get("evaluate") or {})
    return Predictor(model=chosen, prompt=config.prompt, labels=list(labels), n_threads=config.evaluate.n_threads,
                     n_ctx=config.evaluate.n_ctx, config_path=run_dir / "config.yaml", chosen_because=why,
                     extra_buffers=config.evaluate.llama_extra_buffers)


def run_model(run_dir: Path, exported: dict, model: str | None, evaluated: dict | None = None) -> Path:
    """The file or directory `--model` names in a run, or the default (see choose_run_model)."""
    return choose_run_model(run_dir, exported, model, evaluated)[0]


def choose_run_model(run_dir: Path, exported: dict, model: str | None,
                     evaluated: dict | None = None) -> tuple[Path, str]:
    """(the model, why it was chosen): what `--model` names (a quant name in any case, or a
    path); without one the quant the run's last evaluation recommended (`evaluated`: the
    evaluate stage's result), else Q4_K_M, else the smallest exported file, else the merged
    checkpoint. `predict` and `answer` share this choice."""
    files = {name: Path(path) for name, path in (exported.get("files") or {}).items()}
    present = {name: path for name, path in files.items() if path.is_file()}
    has = f"the run has {', '.join(present) or 'no GGUF file'}"
    if model is None:
        recommended = _recommended(evaluated or {}, present)
        if recommended is not None:
            return present[recommended], f"{recommended}: the quant the last evaluation recommended"
        if "Q4_K_M" in present:
            return present["Q4_K_M"], "Q4_K_M: no evaluation recommendation, Q4_K_M is the default"
        if present:
            name, path = min(present.items(), key=lambda item: item[1].stat().st_size)
            return path, f"{name}: no evaluation recommendation and no Q4_K_M, the smallest exported file"
        if files:
            raise TuneGGUFError(f"{run_dir}: the exported files ({', '.join(files)}) are gone from "
                                f"{run_dir / 'export'}; run `tunegguf run` again to re-export them")
        if exported.get("merged_dir") and Path(exported["merged_dir"]).is_dir():
            return Path(exported["merged_dir"]), "the merged checkpoint: no GGUF file was exported"
        raise TuneGGUFError(f"{run_dir}: nothing exported yet; run `tunegguf run` (or give --model)")
    name = next((n for n in files if n.upper() == model.upper()), None)
    if name is not None and name in present:
        return present[name], f"--model {model}"
    if name is not None:
        raise TuneGGUFError(f"--model {model}: the file {files[name]} is gone; {has} (run `tunegguf run` again to re-export it)")
    if Path(model).exists():
        return Path(model), f"--model {model}"
    raise TuneGGUFError(f"--model {model!r} is neither a file nor an exported quant{closest(model, files)}; {has}")


def _recommended(evaluated: dict, present: dict[str, Path]) -> str | None:
    """The quant the run's report recommends, when there is one and its file is on disk."""
    report = evaluated.get("report_json")
    if not report or not Path(report).is_file():
        return None
    try:
        choice = (json.loads(Path(report).read_text()).get("recommendation") or {}).get("choice")
    except (OSError, ValueError, AttributeError):
        return None  # an unreadable report only loses the preference; the other defaults still apply
    return choice if isinstance(choice, str) and choice in present else None


def predict(predictor: Predictor, texts: Sequence[str], *, batch_size: int = 16, workers: int = 1) -> list[Prediction]:
    """Label-probability predictions for `texts` (one forward pass each, batched), in order.

    Every text's prompt must fit predictor.n_ctx tokens; the first that does not is a
    one-line error naming it ("text 3": the third text given). For inputs too big to hold,
    `tunegguf.pipeline.bulk` scores and writes chunk by chunk."""
    from tunegguf.pipeline.bulk import Texts, score_chunks

    texts = list(texts)
    if not texts:
        return []
    out = []
    chunks = Texts(texts, chunk_rows=-(-len(texts) // max(1, workers))).chunks()  # a chunk per worker
    for chunk, scored in score_chunks(predictor, chunks, workers=workers, batch_size=batch_size):
        for text, label, row in zip(chunk.texts, scored.labels, scored.probs):
            probs = {name: float(p) for name, p in zip(predictor.labels, row)}
            out.append(Prediction(text=text, label=label, probability=probs[label], probabilities=probs))
    return out
