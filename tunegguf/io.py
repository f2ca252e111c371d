"""Small file helpers: atomic writes, hashing, JSON/JSONL, cache directory."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Iterable, Iterator, Literal

from tunegguf.errors import TuneGGUFError, closest
from tunegguf.processes import pid_alive

# A temporary's name records its writer: `.NAME.PID-RANDOM.tmp`, so a rerun can tell what a
# killed writer left behind from a file a live process is still writing.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)-[a-z0-9_]{8}\.tmp$")
# The names before the pid was recorded: `.NAME.RANDOM.tmp`.
_OLD_TEMPORARY = re.compile(r"^\..+\.[a-z0-9_]{8}\.tmp$")


def cache_dir() -> Path:
    """Where materialized models and built artefacts live (override with TUNEGGUF_CACHE)."""
    root = os.environ.get("TUNEGGUF_CACHE")
    if root:
        return Path(root)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "tunegguf"


def require_path(path: str | Path, what: str, *, kind: Literal["file", "directory"], fix: str = "") -> Path:
    """`path` as a Path when it is an existing `kind`; otherwise a one-line error: `what` not
    found (with the closest name beside it), or a directory where a file is wanted (or the
    reverse), followed by `fix`, what to give instead."""
    path = Path(path)
    if path.is_dir() if kind == "directory" else path.is_file():
        return path
    if path.exists():
        other = "directory" if path.is_dir() else ("file" if path.is_file() else "special file")
        raise TuneGGUFError(f"{what} is a {other}, not a {kind}: {path}" + (f"; {fix}" if fix else ""))
    hint = ""
    parent = path.parent if str(path.parent) else Path(".")
    if parent.is_dir():
        try:
            hint = closest(path.name, [entry.name for _, entry in zip(range(10_000), parent.iterdir())])
        except OSError:
            pass
    raise TuneGGUFError(f"{what} not found: {path}{hint}")


@contextlib.contextmanager
def atomic_path(target: Path) -> Iterator[Path]:
    """Yield a temp path beside `target`; rename it onto `target` only if the block succeeds."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temporary_prefix(target.name), suffix=".tmp", dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the mode a plain open() would (umask applies).
        umask = os.umask(0)
        os.umask(umask)
        if tmp_path.exists():
            os.chmod(tmp_path, 0o666 & ~umask)
        os.replace(tmp_path, target)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield a temp directory beside `target`; it replaces `target` only on success."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temporary_prefix(target.name), suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _temporary_prefix(name: str) -> str:
    return f".{name}.{os.getpid()}-"


def _stale(name: str, unowned: bool = False) -> bool:
    """A temporary's name whose writer is gone (`unowned`: or that names no writer)."""
    match = _TEMPORARY.match(name)
    if match:
        return not pid_alive(int(match["pid"]))
    return unowned and bool(_OLD_TEMPORARY.match(name))


@contextlib.contextmanager
def scratch_dir(name: str, near: Path | None = None) -> Iterator[Path]:
    """A directory for one child process's files, removed after the block: in `near` (a run's
    folder) when that is writable, else in the system's temporary directory. Named like
    atomic_dir's temporaries, so one a killed process left is removed by the next run
    (`remove_stale_temporaries`) or the next scratch_dir of the same name beside it."""
    parent = Path(near) if near is not None and os.access(near, os.W_OK | os.X_OK) else Path(tempfile.gettempdir())
    for old in parent.glob(f".{name}.*.tmp"):
        match = _TEMPORARY.match(old.name)
        if match and match["name"] == name and _stale(old.name):
            shutil.rmtree(old, ignore_errors=True)
    path = Path(tempfile.mkdtemp(prefix=_temporary_prefix(name), suffix=".tmp", dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def remove_stale_temporaries(directory: Path, *, unowned: bool = False) -> list[Path]:
    """Delete, under `directory` (recursively), the temporary files and directories of
    `atomic_path` / `atomic_dir` whose writing process is gone (killed mid-write: an
    f16-sized `.model-f16.gguf.PID-x.tmp`); return what was removed. `unowned` also
    removes temporaries named without a pid (an older tunegguf's): only for a directory
    whose lock the caller holds, since no writer of those can be told alive."""
    removed: list[Path] = []
    for root, dirs, files in os.walk(directory):
        for name in [d for d in dirs if _stale(d, unowned)]:
            shutil.rmtree(Path(root) / name, ignore_errors=True)
            dirs.remove(name)  # nothing to walk in there any more
            removed.append(Path(root) / name)
        for name in [f for f in files if _stale(f, unowned)]:
            (Path(root) / name).unlink(missing_ok=True)
            removed.append(Path(root) / name)
    return removed


LOCK_FILE = ".tunegguf.lock"
_LOCKED: set[Path] = set()  # directories this process holds (a nested `locked_directory` is a no-op)


@contextlib.contextmanager
def locked_directory(directory: Path, setting: str = "run_dir") -> Iterator[Path]:
    """Hold `directory` for this process while the block runs; another tunegguf process
    that asks for it meanwhile gets one line naming this one (`setting`: how the user
    chose the directory, for the advice).

    The lock is an flock on DIRECTORY/.tunegguf.lock, which the kernel releases when the
    process ends however it ends (kill -9 too), so a lock file left behind never blocks;
    the file records pid, command and start time for the message. Taking the lock also
    removes what a killed writer left in the directory, older tunegguf's temporaries
    included: while the lock is held, nobody else writes there.
    """
    import fcntl

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    key = directory.resolve()
    if key in _LOCKED:
        yield directory
        return
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise TuneGGUFError(
                f"{directory} is in use by another tunegguf process ({_lock_holder(fd)}); wait for it to "
                f"finish or stop it, or choose another {setting}"
            ) from None
        holder = {"pid": os.getpid(), "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:]),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        _LOCKED.add(key)
        try:
            remove_stale_temporaries(directory, unowned=True)
            yield directory
        finally:
            _LOCKED.discard(key)
    finally:
        os.close(fd)  # releases the lock


def _lock_holder(fd: int) -> str:
    try:
        holder = json.loads(os.pread(fd, 4096, 0).decode("utf-8"))
        return f"pid {holder['pid']}: {holder['command']}, started {holder['started']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown"


def atomic_write_text(target: Path, text: str) -> None:
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(target: Path, data: Any) -> None:
    atomic_write_text(Path(target), json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


def read_json(path: Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def write_jsonl(target: Path, rows: Iterable[dict[str, Any]]) -> None:
    with atomic_path(Path(target)) as tmp:
        with tmp.open("w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")


def append_jsonl(target: Path, row: dict[str, Any]) -> None:
    """Append one record and flush, so a crash loses at most the line being written."""
    Path(target).parent.mkdir(parents=True, exist_ok=True)
    with Path(target).open("a", encoding="utf-8") as f:
        f.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
        f.flush()


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    with Path(path).open(encoding="utf-8") as f:
        for line in f:
            if line.strip():
                rows.append(json.loads(line))
    return rows


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def directory_problem(path: Path) -> str | None:
    """Why `path` cannot serve as a directory to write in (checked without creating
    anything), or None: 'is a file, not a directory', 'is under X, which is a file', ..."""
    path = Path(path)
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return "is a file, not a directory" if existing == path else f"is under {existing}, which is a file"
    if not os.access(existing, os.W_OK | os.X_OK):
        return "is not writable" if existing == path else f"cannot be created: {existing} is not writable"
    return None


def require_output_dir(path: Path, option: str) -> Path:
    """`path` when it can be used as an output directory; else one line naming `option`
    (the flag or setting the user gave it with)."""
    problem = directory_problem(path)
    if problem:
        raise TuneGGUFError(f"{option} {path} {problem}; give a directory path")
    return Path(path)


def require_free_disk(directory: Path, needed_bytes: int, what: str) -> None:
    """Refuse before writing when the disk cannot hold the output."""
    directory = Path(directory)
    probe = directory
    while not probe.exists():
        probe = probe.parent
    free = shutil.disk_usage(probe).free
    if free < needed_bytes:
        raise TuneGGUFError(
            f"not enough disk for {what}: need {needed_bytes / 1e9:.1f} GB in {directory}, "
            f"{free / 1e9:.1f} GB free; free some space or point the output elsewhere"
        )
