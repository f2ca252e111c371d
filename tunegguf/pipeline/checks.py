"""Everything about a run config that can be checked before any heavy work.

An unknown quant type, a typo in a model alias or a missing data file would otherwise
stop the run only when its stage is reached: after the fine-tune, an hour later.
`config validate`, `run`, `finetune` and `export run` call `check_before_start` first.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tunegguf.config.run import RunConfig
from tunegguf.errors import TuneGGUFError, closest
from tunegguf.io import require_output_dir

STAGES = ["data", "finetune", "export", "evaluate"]


def stages_until(until: str | None) -> list[str]:
    """The stages a run with `--until STAGE` reaches (all for None or an unknown name,
    which the pipeline refuses itself)."""
    return STAGES[: STAGES.index(until) + 1] if until in STAGES else list(STAGES)


def problems_before_start(config: RunConfig, stages: Sequence[str] = STAGES, *,
                          flags: dict[str, tuple[str, Any]] | None = None, run_dir: bool = True) -> list[str]:
    """One line per problem found in the settings of `stages` without loading a model or
    reading a data file. `flags` is the command's flags as `load_run_config` takes them, so
    a problem with a value a flag gave names the flag; `run_dir=False`: the command writes
    elsewhere."""
    from tunegguf.data.loaders import check_source
    from tunegguf.models.registry import known_module_names, target_module_problem

    found: list[tuple[str, str]] = []  # (setting, problem)

    def check(setting: str, call: Callable, *args) -> bool:
        try:
            call(*args)
        except TuneGGUFError as exc:
            found.append((setting, str(exc)))
            return False
        return True

    if run_dir:
        check("run_dir", require_output_dir, config.run_dir, "run_dir")
    if "data" in stages:
        for setting in ("train", "validation", "test"):
            source = getattr(config.data, setting)
            if source is not None:
                check(f"data.{setting}", check_source, str(source), setting)
    if ("finetune" in stages or "export" in stages) and check("model.name", _model_name, config.model.name):
        modules = known_module_names(config.model.name) if "finetune" in stages else None
        problem = target_module_problem(modules, config.finetune.target_modules) if modules else None
        if problem:
            found.append(("finetune.target_modules", problem))
    exported = _exported_names(config, found if "export" in stages else []) if {"export", "evaluate"} & set(stages) else None
    if "evaluate" in stages and exported is not None:
        for name in config.evaluate.quants:
            if name not in exported:
                found.append(("evaluate.quants", (
                    f"evaluate.quants names {name!r}, which the export does not write{closest(name, exported)}; "
                    f"it writes {', '.join(exported)} (add it to export.quants or drop it here)")))
    given = {key: flag for key, (flag, value) in (flags or {}).items() if value is not None}
    return [f"{given[setting]}: {problem}" if setting in given else problem for setting, problem in found]


def _model_name(name: str) -> None:
    from tunegguf.models.registry import check_model_name

    try:
        check_model_name(name)
    except TuneGGUFError as exc:
        raise TuneGGUFError(f"model.name: {exc}") from None


def _exported_names(config: RunConfig, found: list[tuple[str, str]]) -> list[str] | None:
    """The names the export stage gives its files (F16, Q8_0, Q4_K_M-imat, ...); None when
    export.quants or export.imatrix_quants has a bad entry (added to `found`)."""
    from tunegguf.export.imatrix import SUFFIX
    from tunegguf.export.quantize import resolve_quant
    from tunegguf.export.stage import plan_imatrix_quants, plan_quants

    bad = False
    for setting in ("quants", "imatrix_quants"):
        for name in getattr(config.export, setting):
            try:
                resolve_quant(name)
            except TuneGGUFError as exc:
                found.append((f"export.{setting}", f"export.{setting}: {exc}"))
                bad = True
    if bad:
        return None
    try:
        return ([config.export.outtype.upper()] + plan_quants(config.export)
                + [q + SUFFIX for q in plan_imatrix_quants(config.export)])
    except TuneGGUFError as exc:  # an unquantized type among the imatrix quants
        found.append(("export.imatrix_quants", str(exc)))
        return None


def check_before_start(config: RunConfig, stages: Sequence[str] = STAGES, *,
                       flags: dict[str, tuple[str, Any]] | None = None, run_dir: bool = True) -> None:
    """Raise the first problem `problems_before_start` finds, in one line."""
    problems = problems_before_start(config, stages, flags=flags, run_dir=run_dir)
    if problems:
        more = len(problems) - 1
        suffix = f" (and {more} more problem{'s' if more > 1 else ''}: `tunegguf config validate` lists them)" if more else ""
        raise TuneGGUFError(problems[0] + suffix)
