"""Merge the adapter, convert to GGUF offline, quantize, verify, write the manifest.

The weight-parity measurement is `tunegguf.export.weight_parity.weight_parity`; it is not
re-exported here, where its name would hide the module of the same name.
"""

from tunegguf.export.config import ExportConfig
from tunegguf.export.stage import ExportedFile, ExportResult, run
from tunegguf.export.verify import Check, VerifyResult, verify_files, verify_gguf
from tunegguf.export.weight_parity import WeightParity

__all__ = [
    "Check", "ExportConfig", "ExportResult", "ExportedFile", "VerifyResult", "WeightParity",
    "run", "verify_files", "verify_gguf",
]
