"""Reading an export directory: GGUF files by quant name, Modelfiles, weight parity, the merge inputs."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tunegguf.errors import TuneGGUFError

_QUANT_SUFFIX = re.compile(r"(?:^|[-_.])((?:b?f(?:16|32))|(?:i?q\d[a-z0-9_]*?))(-imat)?$", re.IGNORECASE)


def quant_name(path: Path) -> str:
    """'model-Q4_K_M.gguf' -> 'Q4_K_M', 'model-Q4_0-imat.gguf' -> 'Q4_0-imat',
    'smollm2-f16.gguf' -> 'f16', otherwise the stem."""
    match = _QUANT_SUFFIX.search(path.stem)
    if not match:
        return path.stem
    name = match.group(1)
    name = name.lower() if name.lower() in ("f16", "bf16", "f32") else name.upper()
    return name + ("-imat" if match.group(2) else "")


def _manifest_entries(manifest: Any) -> list[tuple[str | None, str]]:
    """(name, path) pairs from an export manifest of any of the shapes we accept:
    {"files": [{"quant"|"name"|"type": ..., "path"|"file": ...}]}, {"files": {name: path | {...}}}
    (tunegguf's export writes {"files": {"model-Q8_0.gguf": {"quant": "Q8_0", "path": ...}}}),
    or {name: path | {...}} at the top level."""
    entries: list[tuple[str | None, str]] = []
    if isinstance(manifest, dict):
        for key in ("files", "ggufs", "outputs", "quants"):
            if key in manifest:
                return _manifest_entries(manifest[key])
        for name, value in manifest.items():
            if isinstance(value, str) and value.endswith(".gguf"):
                entries.append((str(name), value))
            elif isinstance(value, dict):
                path = value.get("path") or value.get("file") or (name if str(name).endswith(".gguf") else None)
                label = value.get("quant") or value.get("name") or name  # export keys entries by file name
                if isinstance(path, str) and path.endswith(".gguf"):
                    entries.append((str(label), path))
    elif isinstance(manifest, list):
        for item in manifest:
            if isinstance(item, str) and item.endswith(".gguf"):
                entries.append((None, item))
            elif isinstance(item, dict):
                path = item.get("path") or item.get("file")
                name = item.get("quant") or item.get("name") or item.get("type") or item.get("outtype")
                if isinstance(path, str) and path.endswith(".gguf"):
                    entries.append((str(name) if name else None, path))
    return entries


def gguf_dir_files(directory: Path) -> dict[str, Path]:
    """The GGUF files of an export directory: from manifest.json when it lists them, else *.gguf."""
    files: dict[str, Path] = {}
    manifest_path = directory / "manifest.json"
    if manifest_path.is_file():
        try:
            entries = _manifest_entries(json.loads(manifest_path.read_text(encoding="utf-8")))
        except json.JSONDecodeError as exc:
            raise TuneGGUFError(f"{manifest_path}: not valid JSON (line {exc.lineno}); fix or delete it") from None
        for name, file in entries:
            path = Path(file) if Path(file).is_absolute() else directory / file
            files[name or quant_name(path)] = path
    if not files:
        files = {quant_name(p): p for p in sorted(directory.glob("*.gguf"))}
    if not files:
        raise TuneGGUFError(f"--gguf-dir {directory}: no .gguf files there (and no manifest.json listing any)")
    return files


def manifest_diagnostics(directory: Path) -> dict[str, Any]:
    """From an export directory's manifest.json: the Modelfile and the weight-parity summary of
    each GGUF (names as gguf_dir_files gives them), and the base/adapter the merge used."""
    from tunegguf.export.manifest import Manifest

    manifest_path = directory / "manifest.json"
    out: dict[str, Any] = {"modelfiles": {}, "weight_parity": {}, "adapter_reference": None}
    if not manifest_path.is_file():
        return out
    manifest = Manifest.read(manifest_path)
    for entry in manifest.files.values():
        name = entry.quant or quant_name(Path(entry.path))
        if isinstance(entry.modelfile, str) and (directory / entry.modelfile).is_file():
            out["modelfiles"][name] = directory / entry.modelfile
        if isinstance(entry.weight_parity, dict):
            # The per-tensor rows stay in the manifest; the report needs the verdict and the layers.
            out["weight_parity"][name] = {k: v for k, v in entry.weight_parity.items() if k != "tensors"}
    base = manifest.base_dir or manifest.base_model
    if manifest.adapter_dir and base:
        out["adapter_reference"] = (base, Path(manifest.adapter_dir))
    return out
