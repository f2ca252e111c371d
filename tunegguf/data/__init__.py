"""Datasets: load, clean, balance, split and freeze the rows every stage reads."""

from tunegguf.data.clean import LengthLimit, cut_to_tokens
from tunegguf.data.config import DataConfig
from tunegguf.data.example import Example
from tunegguf.data.inputs import load_rows
from tunegguf.data.inspect import inspect_files, render_inspection
from tunegguf.data.prepare import PreparedData, load_split, prepare, run

__all__ = [
    "DataConfig",
    "Example",
    "LengthLimit",
    "PreparedData",
    "inspect_files",
    "load_rows",
    "load_split",
    "prepare",
    "render_inspection",
    "cut_to_tokens",
    "run",
]
