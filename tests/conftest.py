"""Shared fixtures: offline environment, the two real test models and their f16 GGUFs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Set before any test module imports transformers / huggingface_hub.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("UNSLOTH_DISABLE_STATISTICS", "1")

SHARED_SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "sst2"


@pytest.fixture(scope="session", autouse=True)
def user_cache_in_tmp(tmp_path_factory) -> Path:
    """tunegguf's cache (the embedded models it builds, llama.cpp probes) lives in a session
    temporary directory, so tests never write to the real user cache; the embedded model
    is built there once per session (about 30 s). Set TUNEGGUF_TEST_CACHE=DIR to reuse a
    cache between sessions instead (as when iterating on one test)."""
    reuse = os.environ.get("TUNEGGUF_TEST_CACHE")
    cache = Path(reuse) if reuse else tmp_path_factory.mktemp("tunegguf-cache")
    os.environ["TUNEGGUF_CACHE"] = str(cache)
    return cache


@pytest.fixture(autouse=True)
def run_dirs_in_tmp(tmp_path, monkeypatch) -> None:
    """Each test runs in its own temporary directory, so a default `run_dir` (runs/demo,
    relative) never lands in the checkout."""
    monkeypatch.chdir(tmp_path)


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """SmolLM2-135M-Instruct as an HF checkpoint (built once into the user cache)."""
    from tunegguf.models import resolve_model

    return Path(resolve_model("smollm2-135m").path)


@pytest.fixture(scope="session")
def tiny_llama3_dir() -> Path:
    """2-layer random Llama 3.1-shaped model with the real Llama 3 tokenizer."""
    from tunegguf.models import resolve_model

    return Path(resolve_model("tiny-llama3").path)


@pytest.fixture(scope="session")
def gguf_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("gguf")


@pytest.fixture(scope="session")
def smollm2_f16_gguf(smollm2_dir, gguf_dir) -> Path:
    from tunegguf.export.convert import convert_to_gguf

    return convert_to_gguf(smollm2_dir, gguf_dir / "smollm2-f16.gguf", "f16")


@pytest.fixture(scope="session")
def tiny_llama3_f16_gguf(tiny_llama3_dir, gguf_dir) -> Path:
    from tunegguf.export.convert import convert_to_gguf

    return convert_to_gguf(tiny_llama3_dir, gguf_dir / "tiny-llama3-f16.gguf", "f16")


@pytest.fixture(scope="session")
def sst2_dir() -> Path:
    if not (SHARED_SST2 / "train.tsv").is_file():
        pytest.skip("../shared/data/sst2 is not present")
    return SHARED_SST2


def pytest_collection_modifyitems(config, items):
    import importlib.util

    has_cuda = False
    if importlib.util.find_spec("torch") is not None:
        import torch

        has_cuda = torch.cuda.is_available()
    skip_gpu = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords and not has_cuda:
            item.add_marker(skip_gpu)
