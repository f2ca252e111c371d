"""Merge the adapter, convert to GGUF offline, quantize, verify, write the manifest."""

from tunegguf.export.config import ExportConfig
from tunegguf.export.stage import ExportedFile, ExportResult, run
from tunegguf.export.verify import Check, VerifyResult, verify_files, verify_gguf
from tunegguf.export.weight_parity import WeightParity, weight_parity

__all__ = [
    "Check", "ExportConfig", "ExportResult", "ExportedFile", "VerifyResult", "WeightParity",
    "run", "verify_files", "verify_gguf", "weight_parity",
]
