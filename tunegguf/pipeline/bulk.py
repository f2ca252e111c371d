"""`tunegguf predict` on inputs of any size: chunks scored by N backends, written resumably.

The input arrives in chunks (tunegguf.data.stream); each chunk is scored by one of
`workers` llama.cpp processes (each with its share of the cores) and its output rows are
written, atomically, as one file in `<output>.partial/`. A manifest there records what the
output is of (input, model, labels, prompt, chunk size); a rerun of the same command skips
the chunks already on disk, so a killed run loses at most the chunks in flight, and the
finished output is the chunks concatenated in input order (streamed: constant memory).
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import queue
import shutil
import sys
import threading
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator, Sequence

import numpy as np

from tunegguf.data.example import Example
from tunegguf.data.stream import Chunk
from tunegguf.errors import TuneGGUFError
from tunegguf.io import atomic_path, locked_directory, read_json, write_json
from tunegguf.prompts import PromptRenderer, TemplateTokens

if TYPE_CHECKING:  # pipeline.predict calls score_chunks: the types only, no import cycle
    from tunegguf.pipeline.predict import Predictor

OUTPUT_TYPES = (".csv", ".tsv", ".jsonl", ".json", ".parquet")
CHUNK_ROWS = 512
"""Rows per chunk file: a kill loses at most `workers` chunks of work, and 512 rows of a
slow 8B model (a few rows/s) is minutes, of a 135M model seconds; the manifest records it."""
CHUNK_ROWS_ENV = "TUNEGGUF_PREDICT_CHUNK_ROWS"
MANIFEST_VERSION = 1
ROUND = 6
"""Decimals of the probabilities written (a float32's ~7 significant digits)."""


@dataclass
class Scored:
    """One chunk's predictions, rows in chunk order."""

    labels: list[str]
    probs: np.ndarray
    """[rows, labels] float32, renormalized over the label set."""


def chunk_rows_default() -> int:
    raw = os.environ.get(CHUNK_ROWS_ENV)
    if not raw:
        return CHUNK_ROWS
    try:
        value = int(raw)
    except ValueError:
        value = 0
    if value < 1:
        raise TuneGGUFError(f"{CHUNK_ROWS_ENV}={raw!r}: give a whole number of rows, at least 1")
    return value


class Texts:
    """TEXT arguments or stdin lines as a chunked source (held in memory: they were typed or piped)."""

    def __init__(self, texts: Sequence[str], chunk_rows: int = CHUNK_ROWS, where: str = "text") -> None:
        self.texts = list(texts)
        self.chunk_rows, self.where = chunk_rows, where
        self.total = len(self.texts)
        self.name = "the texts given"

    @property
    def identity(self) -> dict[str, Any]:
        digest = hashlib.sha256("\n".join(self.texts).encode("utf-8")).hexdigest()
        return {"texts": len(self.texts), "sha256": digest}

    def chunks(self) -> Iterator[Chunk]:
        for index, start in enumerate(range(0, len(self.texts), self.chunk_rows)):
            texts = self.texts[start : start + self.chunk_rows]
            yield Chunk(index=index, start=start, rows=[{"text": t} for t in texts], texts=texts,
                        names=[f"{self.where} {start + i + 1}" for i in range(len(texts))])


# ---- scoring ---------------------------------------------------------------------------------


def worker_threads(predictor: Predictor, workers: int) -> int | None:
    """llama.cpp threads per worker: the run's evaluate.n_threads (else every core) shared out,
    at least one each; one worker without evaluate.n_threads keeps the backend's default."""
    if workers == 1:
        return predictor.n_threads
    return max(1, (predictor.n_threads or os.cpu_count() or 1) // workers)


def score_chunks(predictor: Predictor, chunks: Iterable[Chunk], *, workers: int = 1, batch_size: int = 16,
                 on_rows: Callable[[int], None] | None = None,
                 on_open: Callable[[dict[str, Any]], None] | None = None) -> Iterator[tuple[Chunk, Scored]]:
    """(chunk, its predictions) in input order, each chunk scored whole by one of `workers`
    backends (llama.cpp processes; an HF checkpoint: one, in this process). At most
    2 * workers chunks are held at once, so memory does not grow with the input. The model
    loads only when the first chunk arrives (nothing to score: nothing loads). on_rows(n):
    n more rows scored (a progress bar); on_open(info): the first backend's info."""
    from tunegguf.evaluate.backends import BackendOptions, BackendSpec, ModelKind, open_backend
    from tunegguf.evaluate.backends.kernels import resolve_extra_buffers
    from tunegguf.evaluate.lengths import PromptLimit

    if workers < 1:
        raise TuneGGUFError(f"--workers {workers}: give at least 1")
    if not predictor.is_gguf and workers != 1:
        raise TuneGGUFError(f"--workers {workers}: an HF checkpoint ({predictor.model}) runs in this process, one at "
                            "a time; give --workers 1, or a .gguf model for parallel llama.cpp workers")
    chunks = iter(chunks)
    first = next(chunks, None)
    if first is None:
        return
    if predictor.is_gguf:
        tokens = TemplateTokens.from_gguf(predictor.model)
        spec = BackendSpec(ModelKind.GGUF, "gguf", predictor.model)
    else:
        from transformers import AutoTokenizer

        if not (predictor.model / "config.json").is_file():
            raise TuneGGUFError(f"{predictor.model} is neither a .gguf file nor an HF checkpoint directory")
        tokens = TemplateTokens.from_hf_tokenizer(AutoTokenizer.from_pretrained(predictor.model))
        spec = BackendSpec(ModelKind.HF, "hf", str(predictor.model))
    renderer = PromptRenderer(predictor.prompt, tokens, predictor.labels)
    where = f" in {predictor.config_path}" if predictor.config_path else " in a --config file"
    limit = PromptLimit(predictor.n_ctx, f"evaluate.n_ctx={predictor.n_ctx}", fix=f"raise evaluate.n_ctx{where}")
    extra = resolve_extra_buffers(predictor.extra_buffers, predictor.n_threads) if predictor.is_gguf else False
    options = BackendOptions(batch_size=batch_size, n_threads=worker_threads(predictor, workers),
                             n_ctx=predictor.n_ctx, extra_buffers=extra)
    # Opened from this thread, which outlives them: the worker processes die with it (processes.py).
    backends = []
    try:
        for _ in range(workers):
            backends.append(open_backend(spec, options))
        if on_open is not None:
            on_open(dict(backends[0].info))
        yield from _score_in_order(backends, renderer, list(predictor.labels), limit, first, chunks, batch_size,
                                   on_rows)
    finally:
        for backend in backends:
            backend.close()


def _score_in_order(backends, renderer, labels, limit, first, chunks, batch_size, on_rows):
    from tunegguf.evaluate.lengths import check_prompt_tokens
    from tunegguf.evaluate.scoring import label_probabilities
    from tunegguf.prompts.verbalizer import label_token_ids

    def render(chunk: Chunk) -> list[str]:
        return [renderer.render(Example(id=str(chunk.start + i), text=t)).prompt for i, t in enumerate(chunk.texts)]

    # Every prompt ends with the same generation prompt, so the first one decides the label
    # tokens, for every worker alike.
    encode = lambda text: backends[0].tokenize([text])[0]  # noqa: E731
    label_ids = label_token_ids(encode, renderer.render(Example(id="0", text=first.texts[0])).prompt, renderer.words)
    counted = threading.Lock()  # the workers' threads report progress into one counter
    free: queue.Queue = queue.Queue()
    for backend in backends:
        free.put(backend)

    def score(chunk: Chunk) -> Scored:
        backend = free.get()
        try:
            prompts = render(chunk)
            check_prompt_tokens(backend.tokenize(prompts), chunk.names, limit)
            probs = np.empty((len(prompts), len(label_ids)), dtype=np.float32)
            for start in range(0, len(prompts), batch_size):
                _, probs[start : start + batch_size] = label_probabilities(
                    backend, prompts[start : start + batch_size], label_ids, batch_size)
                if on_rows is not None:
                    with counted:
                        on_rows(len(prompts[start : start + batch_size]))
            return Scored(labels=[labels[i] for i in probs.argmax(axis=1)], probs=probs)
        finally:
            free.put(backend)

    pool = ThreadPoolExecutor(max_workers=len(backends), thread_name_prefix="tunegguf-predict")
    pending: deque = deque()
    try:
        for chunk in _chain(first, chunks):
            pending.append((chunk, pool.submit(score, chunk)))
            # Two chunks per worker in flight: one scoring, one queued behind it.
            while len(pending) >= 2 * len(backends):
                done, future = pending.popleft()
                yield done, future.result()
        while pending:
            done, future = pending.popleft()
            yield done, future.result()
    finally:
        # Queued chunks are dropped; the ones being scored finish, so every backend is idle
        # (not mid-request) when it is closed.
        pool.shutdown(wait=True, cancel_futures=True)


def _chain(first, rest):
    yield first
    yield from rest


# ---- output ----------------------------------------------------------------------------------


def output_row(row: dict[str, Any], scored: Scored, index: int, labels: Sequence[str]) -> dict[str, Any]:
    """The input row with label, probability and p_<label> for every label (an input column
    of the same name is replaced in place)."""
    probs = scored.probs[index]
    out = dict(row)
    label = scored.labels[index]
    out["label"] = label
    out["probability"] = round(float(probs[list(labels).index(label)]), ROUND)
    for name, p in zip(labels, probs):
        out[f"p_{name}"] = round(float(p), ROUND)
    return out


class _Format:
    """How chunk files of one output type are written and joined into the output."""

    def __init__(self, output: Path, labels: Sequence[str]) -> None:
        self.output, self.labels = output, list(labels)
        self.suffix = output.suffix.lower()
        self.chunk_suffix = ".jsonl" if self.suffix == ".json" else self.suffix
        self.columns: list[str] | None = None
        self.schema = None

    def set_columns(self, first: Chunk) -> None:
        """The columns of a tabular output: the first chunk's (every run reads chunk 0 first,
        a resumed one too, so they are the same in every run)."""
        columns = list(dict.fromkeys(k for row in first.rows for k in row))
        added = ["label", "probability"] + [f"p_{name}" for name in self.labels]
        self.columns = columns + [c for c in added if c not in columns]

    def _check_columns(self, chunk: Chunk) -> None:
        known = set(self.columns or [])
        for row, name in zip(chunk.rows, chunk.names):
            extra = [k for k in row if k not in known]
            if extra:
                raise TuneGGUFError(
                    f"{name}: column '{extra[0]}' is not in the first rows; a {self.suffix} output takes its columns "
                    "from the first chunk of rows: write a .jsonl output, or give every row the same keys")

    def write_chunk(self, path: Path, chunk: Chunk, scored: Scored) -> None:
        rows = [output_row(row, scored, i, self.labels) for i, row in enumerate(chunk.rows)]
        with atomic_path(path) as tmp:
            if self.suffix in (".csv", ".tsv"):
                self._check_columns(chunk)
                with tmp.open("w", encoding="utf-8", newline="") as f:
                    writer = csv.DictWriter(f, fieldnames=self.columns, delimiter="," if self.suffix == ".csv" else "\t",
                                            lineterminator="\n", restval="")
                    if chunk.index == 0:
                        writer.writeheader()
                    writer.writerows({k: _cell(v) for k, v in row.items()} for row in rows)
            elif self.suffix == ".parquet":
                self._check_columns(chunk)
                import pyarrow as pa
                import pyarrow.parquet as pq

                full = [{c: row.get(c) for c in self.columns} for row in rows]
                if self.schema is None:
                    # Chunk 0's types for every chunk: read back from its file when a resumed
                    # run starts later, so the chunks join into one table.
                    first = path.parent / f"chunk-{0:06d}.parquet"
                    self.schema = (pq.read_schema(first) if chunk.index > 0 and first.is_file()
                                   else _schema(pa.Table.from_pylist(full).schema))
                try:
                    table = pa.Table.from_pylist(full, schema=self.schema)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as exc:
                    raise TuneGGUFError(
                        f"{chunk.names[0]} and after: values of another type than in the first rows ({exc}); a "
                        ".parquet output keeps the first chunk's column types: write a .jsonl output instead") from None
                pq.write_table(table, tmp)
            else:
                with tmp.open("w", encoding="utf-8") as f:
                    for row in rows:
                        f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")

    def assemble(self, chunk_files: list[Path], tmp: Path) -> None:
        """The chunk files joined into `tmp`, one chunk in memory at a time."""
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq

            writer = None
            try:
                for path in chunk_files:
                    table = pq.read_table(path)
                    if writer is None:
                        writer = pq.ParquetWriter(tmp, table.schema)
                    writer.write_table(table)
            finally:
                if writer is not None:
                    writer.close()
            return
        with tmp.open("wb") as out:
            if self.suffix == ".json":
                out.write(b"[\n")
                first = True
                for path in chunk_files:
                    with path.open("rb") as f:
                        for line in f:
                            out.write((b"" if first else b",\n") + line.rstrip(b"\n"))
                            first = False
                out.write(b"\n]\n")
                return
            for path in chunk_files:
                with path.open("rb") as f:
                    shutil.copyfileobj(f, out, 1 << 20)


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False, default=str)
    return value


def _schema(schema):
    """A first chunk's inferred schema with all-null columns typed as strings (a later chunk
    may hold text there)."""
    import pyarrow as pa

    return pa.schema([pa.field(f.name, pa.string()) if pa.types.is_null(f.type) else f for f in schema])


def partial_dir(output: Path) -> Path:
    return output.parent / f"{output.name}.partial"


def _model_identity(model: Path) -> dict[str, Any]:
    path = Path(model).resolve()
    if path.is_dir():
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    else:
        size = path.stat().st_size
    return {"path": str(path), "size": size}


def manifest_for(predictor: Predictor, source, chunk_rows: int, text_column: str | None) -> dict[str, Any]:
    from tunegguf.config.typed import to_dict

    return {"tunegguf_predict": MANIFEST_VERSION, "input": source.identity, "text_column": text_column,
            "model": _model_identity(predictor.model), "labels": list(predictor.labels),
            "prompt": to_dict(predictor.prompt), "chunk_rows": chunk_rows}


def _differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = [k for k in new if old.get(k) != new[k]] + [k for k in old if k not in new]
    names = {"input": "input file", "model": "model", "labels": "labels", "prompt": "prompt settings",
             "chunk_rows": "chunk size", "text_column": "text column", "tunegguf_predict": "manifest version"}
    return [names.get(k, k) for k in keys]


@dataclass
class WriteResult:
    output: Path
    rows: int
    chunks: int
    resumed_chunks: int
    """Chunks found finished on disk from a killed run (not scored again)."""


def write_predictions(predictor: Predictor, source, output: Path, *, workers: int = 1, batch_size: int = 16,
                      restart: bool = False, text_column: str | None = None, progress: bool = True,
                      log: Callable[[str], None] | None = None,
                      on_open: Callable[[dict[str, Any]], None] | None = None) -> WriteResult:
    """Score every row of `source` (a RowStream or Texts) into `output` (.csv, .tsv, .jsonl,
    .json, .parquet), resumably: see the module docstring. `restart` discards a partial
    output of an earlier run first, whatever it was of. on_open: see score_chunks."""
    output = Path(output)
    suffix = output.suffix.lower()
    if output.is_dir() or suffix not in OUTPUT_TYPES:
        what = "is a directory" if output.is_dir() else f"has type '{output.suffix or '(none)'}'"
        raise TuneGGUFError(f"--output {output} {what}; give a {', '.join(OUTPUT_TYPES)} file")
    partial = partial_dir(output)
    if restart and partial.exists():
        shutil.rmtree(partial)
    manifest = manifest_for(predictor, source, source.chunk_rows, text_column)
    with locked_directory(partial, setting="--output"):
        manifest_path = partial / "manifest.json"
        if manifest_path.is_file():
            try:
                old = read_json(manifest_path)
            except (OSError, ValueError):
                old = {}
            different = _differences(old, manifest)
            if different:
                raise TuneGGUFError(
                    f"{partial} holds a partial output of another run (its {', '.join(different)} differ); rerun with "
                    f"--restart to discard it and start over, or choose another --output")
        else:
            write_json(manifest_path, manifest)
        fmt = _Format(output, predictor.labels)
        done = _finished_chunks(partial, fmt.chunk_suffix)
        if log is not None and done:
            log(f"resuming: {done} chunk(s) of {source.chunk_rows} rows are already on disk in {partial}")
        rows_done = 0
        skipped = done * source.chunk_rows
        bar = _bar(source.total, progress, initial=min(skipped, source.total) if source.total else skipped)
        try:
            def remaining() -> Iterator[Chunk]:
                nonlocal rows_done
                for chunk in source.chunks():
                    if chunk.index == 0:
                        fmt.set_columns(chunk)
                    if chunk.index < done:
                        rows_done += len(chunk.rows)  # read again (the stream has no seek), not scored
                        continue
                    yield chunk

            n_chunks = done
            scored_rows = score_chunks(predictor, remaining(), workers=workers, batch_size=batch_size,
                                       on_rows=bar.update if bar is not None else None, on_open=on_open)
            for chunk, scored in scored_rows:
                fmt.write_chunk(_chunk_path(partial, chunk.index, fmt.chunk_suffix), chunk, scored)
                rows_done += len(chunk.rows)
                n_chunks = chunk.index + 1
        finally:
            if bar is not None:
                if bar.total != bar.n and rows_done == bar.n:
                    bar.total = bar.n  # the line count was an estimate: end the bar at 100%
                    bar.refresh()
                bar.close()
        files = [_chunk_path(partial, i, fmt.chunk_suffix) for i in range(n_chunks)]
        if not files:
            raise TuneGGUFError(f"{source.name}: no rows to classify")
        # Written inside the partial directory and renamed onto the output: a kill while
        # joining leaves the chunks, and the rerun joins them again.
        joined = partial / f"joined{suffix}"
        fmt.assemble(files, joined)
        os.replace(joined, output)
        shutil.rmtree(partial, ignore_errors=True)
    return WriteResult(output=output, rows=rows_done, chunks=n_chunks, resumed_chunks=done)


def _chunk_path(partial: Path, index: int, suffix: str) -> Path:
    return partial / f"chunk-{index:06d}{suffix}"


def _finished_chunks(partial: Path, suffix: str) -> int:
    """How many chunk files 0, 1, ... are on disk without a gap (each was renamed into place
    whole, so a present file is a complete one)."""
    count = 0
    while _chunk_path(partial, count, suffix).is_file():
        count += 1
    return count


def _bar(total: int | None, enabled: bool, initial: int = 0):
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # rows/s and ETA from tqdm's own rate; total is an estimate for CSV/JSONL (a line count).
    return tqdm(total=total, initial=initial, unit="row", desc="predict", dynamic_ncols=True, file=sys.stderr,
                mininterval=0.5)


__all__ = ["CHUNK_ROWS", "OUTPUT_TYPES", "Scored", "Texts", "WriteResult", "chunk_rows_default", "output_row",
           "partial_dir", "score_chunks", "write_predictions", "worker_threads"]
