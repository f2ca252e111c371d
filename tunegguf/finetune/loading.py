"""Base model + LoRA adapter for training: Unsloth's FastLanguageModel, or plain PEFT.

Precision follows the hardware: 4-bit QLoRA and bf16 (fp16 on a T4) on CUDA, float32 on
the CPU. Unsloth is imported before transformers / trl / peft in the same call, because it
patches them on import; the PEFT engine never imports it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Any

from tunegguf.console import Log, captured_stdout, say
from tunegguf.errors import TuneGGUFError, closest
from tunegguf.finetune.config import FinetuneConfig
from tunegguf.models import ModelConfig, ResolvedModel
from tunegguf.models.registry import describe_hub_error, target_module_problem

GRADIENT_CHECKPOINTING = {"unsloth": "unsloth", "true": True, "false": False}
UNSLOTH_WARNING = re.compile(r"warn|error|fail", re.IGNORECASE)


@dataclass(frozen=True)
class Precision:
    device: str
    """"cuda" or "cpu"."""
    dtype: str
    """float32, bfloat16 or float16: the weights' dtype and the autocast dtype."""
    load_in_4bit: bool


@dataclass
class Loaded:
    model: Any
    """A PeftModel with the LoRA adapter attached (trainable parameters: the adapter only)."""
    tokenizer: Any
    engine: str
    """"unsloth" or "peft"."""
    precision: Precision
    notes: list[str] = field(default_factory=list)


def import_unsloth_first(engine: str) -> None:
    """Import Unsloth before anything imports transformers, trl or peft, when it may train.

    Unsloth patches those libraries as it is imported; imported after them it warns that
    "all optimizations" may not apply, and on a GPU that is the difference between its
    kernels and plain Transformers. The plain PEFT engine never imports it. A failing
    import is left for the loader, which reports it (or falls back, with engine auto).
    """
    if engine == "peft" or "unsloth" in sys.modules or importlib.util.find_spec("unsloth") is None:
        return
    try:
        with captured_stdout():  # its banner; tunegguf says the engine and device in its own line
            import unsloth  # noqa: F401
    except Exception:  # noqa: BLE001 - load_for_training imports it again and says why
        pass


def resolve_precision(model_cfg: ModelConfig) -> Precision:
    """4-bit only on CUDA; dtype auto: bf16 where supported, fp16 on older GPUs, fp32 on CPU."""
    import torch

    cuda = torch.cuda.is_available()
    if model_cfg.load_in_4bit and not cuda:
        raise TuneGGUFError(
            "model.load_in_4bit is true but no CUDA GPU is visible; 4-bit QLoRA needs one. "
            "Set model.load_in_4bit to null (auto) or false to train 16/32-bit LoRA on the CPU"
        )
    four_bit = cuda if model_cfg.load_in_4bit is None else bool(model_cfg.load_in_4bit)
    dtype = model_cfg.dtype
    if dtype == "auto":
        if cuda:
            dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float16"
        else:
            dtype = "float32"
    if dtype == "float16" and not cuda:
        raise TuneGGUFError("model.dtype float16 is for GPUs; use float32 (or bfloat16) on the CPU")
    return Precision(device="cuda" if cuda else "cpu", dtype=dtype, load_in_4bit=four_bit)


def load_for_training(
    config: FinetuneConfig, model_cfg: ModelConfig, resolved: ResolvedModel, precision: Precision,
    log: Log = say,
) -> Loaded:
    """Load with the configured engine; `auto` falls back to PEFT when Unsloth cannot."""
    if config.engine in ("auto", "unsloth"):
        try:
            return _load_unsloth(config, model_cfg, resolved, precision, log)
        except TuneGGUFError:
            raise
        except Exception as exc:  # noqa: BLE001 - any Unsloth failure has the same remedy
            _raise_if_fatal(exc, resolved)
            reason = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            if config.engine == "unsloth":
                raise TuneGGUFError(
                    f"Unsloth cannot train '{resolved.name}' ({reason}); set finetune.engine to auto or peft"
                ) from exc
            note = f"Unsloth cannot train '{resolved.name}' ({reason}); falling back to Transformers + PEFT"
            loaded = _load_peft(config, model_cfg, resolved, precision)
            loaded.notes.append(note)
            return loaded
    return _load_peft(config, model_cfg, resolved, precision)


def _raise_if_fatal(exc: BaseException, resolved: ResolvedModel) -> None:
    """Errors another engine would hit too: hub access, out of memory."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        raise exc
    if not resolved.is_local and _is_hub_error(exc):
        raise describe_hub_error(resolved.name, exc) from exc


def _is_hub_error(exc: BaseException) -> bool:
    module = type(exc).__module__ or ""
    return isinstance(exc, OSError) or module.startswith(("huggingface_hub", "requests", "httpx"))


def _torch_dtype(name: str) -> Any:
    import torch

    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def _token() -> str | None:
    # Read from the environment and handed to the loader only; never logged.
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN")


def _check_target_modules(model: Any, target_modules: list[str]) -> None:
    leaves = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules()}
    problem = target_module_problem(leaves, target_modules)
    if problem:
        raise TuneGGUFError(problem)


def _load_unsloth(config: FinetuneConfig, model_cfg: ModelConfig, resolved: ResolvedModel, precision: Precision,
                  log: Log = say) -> Loaded:
    # Unsloth prints a banner on import and on load (GPU, versions, "no GPU found"); tunegguf
    # says the engine, device and dtype in its own line, so only its warnings are passed on.
    with captured_stdout(log, keep=UNSLOTH_WARNING):
        import unsloth  # noqa: F401  - first: it patches transformers, trl and peft on import
        from unsloth import FastLanguageModel

        model, tokenizer = FastLanguageModel.from_pretrained(
            model_name=resolved.path,
            max_seq_length=model_cfg.max_seq_length,
            dtype=_torch_dtype(precision.dtype),
            load_in_4bit=precision.load_in_4bit,
            token=_token(),
        )
    gc = GRADIENT_CHECKPOINTING[config.gradient_checkpointing]
    _check_target_modules(model, config.target_modules)
    model = FastLanguageModel.get_peft_model(
        model,
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        use_gradient_checkpointing=gc,
        random_state=config.seed,
        max_seq_length=model_cfg.max_seq_length,
    )
    tokenizer = _with_pad(tokenizer)
    return Loaded(model=model, tokenizer=tokenizer, engine="unsloth", precision=precision)


def _load_peft(config: FinetuneConfig, model_cfg: ModelConfig, resolved: ResolvedModel, precision: Precision) -> Loaded:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, AutoTokenizer

    dtype = _torch_dtype(precision.dtype)
    kwargs: dict[str, Any] = {"dtype": dtype, "token": _token()}
    if precision.load_in_4bit:
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        )
        kwargs["device_map"] = {"": 0}
    try:
        model = AutoModelForCausalLM.from_pretrained(resolved.path, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(resolved.path, token=_token())
    except torch.OutOfMemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - turned into one line naming the model
        if not resolved.is_local:
            raise describe_hub_error(resolved.name, exc) from exc
        raise TuneGGUFError(f"cannot load model '{resolved.name}': {str(exc).splitlines()[0] if str(exc) else exc!r}") from exc
    if precision.device == "cuda" and not precision.load_in_4bit:
        model = model.to("cuda")
    _check_target_modules(model, config.target_modules)
    gc = GRADIENT_CHECKPOINTING[config.gradient_checkpointing]
    if precision.load_in_4bit:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(gc), gradient_checkpointing_kwargs={"use_reentrant": False}
        )
    elif gc:
        # "unsloth" has no meaning here: plain recomputation, as Unsloth itself does on the CPU.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.enable_input_require_grads()
    model.config.use_cache = False
    torch.manual_seed(config.seed)  # the same LoRA init as Unsloth's random_state
    lora = LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.target_modules),
        bias="none",
        task_type="CAUSAL_LM",
    )
    model = get_peft_model(model, lora)
    return Loaded(model=model, tokenizer=_with_pad(tokenizer), engine="peft", precision=precision)


def _with_pad(tokenizer: Any) -> Any:
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def describe_oom(config: FinetuneConfig, model_cfg: ModelConfig, where: str) -> TuneGGUFError:
    """What to lower after an out-of-memory error, with the values in use."""
    effective = config.batch_size * config.gradient_accumulation_steps
    return TuneGGUFError(
        f"out of GPU memory while {where}: lower finetune.batch_size (now {config.batch_size}) and raise "
        f"finetune.gradient_accumulation_steps to keep the effective batch of {effective}, or lower "
        f"model.max_seq_length (now {model_cfg.max_seq_length}) or finetune.lora_r (now {config.lora_r}); "
        "model.load_in_4bit true also saves memory"
    )


def library_versions(engine: str) -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    import tunegguf

    names = ["torch", "transformers", "peft", "trl", "accelerate", "datasets"]
    if engine == "unsloth":
        names += ["unsloth", "unsloth_zoo"]
    out: dict[str, str | None] = {"tunegguf": tunegguf.__version__}
    for name in names:
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out
