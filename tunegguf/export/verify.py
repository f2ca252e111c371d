"""Verify a GGUF in a separate process; a crash in llama.cpp becomes a failed check.

`verify_gguf` starts `python -m tunegguf.export.verify_worker`, which appends one JSON line
per finished check. Whatever the child does (segfault, abort, hang) the caller gets a
`VerifyResult` naming each check with pass / fail / skip and a one-line detail.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tunegguf import processes
from tunegguf.errors import TuneGGUFError
from tunegguf.export.verify_worker import CHECKS
from tunegguf.io import read_jsonl, scratch_dir, write_json
from tunegguf.processes import signal_name

Status = Literal["pass", "fail", "skip"]


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    detail: str


@dataclass
class VerifyResult:
    path: str
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    """Things worth knowing that are not failures (e.g. a llama.cpp host workaround)."""

    @property
    def ok(self) -> bool:
        """No check failed (skipped ones, e.g. without an HF tokenizer, do not count)."""
        return not self.failures

    @property
    def passed(self) -> bool:
        """Every check ran and passed: the condition for a file to count as exported."""
        return bool(self.checks) and all(c.status == "pass" for c in self.checks)

    @property
    def failures(self) -> list[Check]:
        return [c for c in self.checks if c.status == "fail"]

    def check(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def summary(self) -> str:
        counts = {s: sum(c.status == s for c in self.checks) for s in ("pass", "fail", "skip")}
        text = f"{counts['pass']} passed, {counts['fail']} failed, {counts['skip']} skipped"
        if self.failures:
            first = self.failures[0]
            text += f"; {first.name}: {first.detail}"
        return text

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks],
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, path: str, data: dict[str, Any]) -> "VerifyResult":
        checks = [Check(c["name"], c["status"], c["detail"]) for c in data.get("checks", [])]
        return cls(path, checks, list(data.get("notes", [])))


def _crash_reason(returncode: int | None, stderr: str, timeout_s: float) -> str:
    if returncode is None:
        return f"the check process did not finish within {timeout_s:.0f} s and was stopped"
    if returncode < 0:
        return f"the check process was killed by {signal_name(returncode)} (a crash inside llama.cpp)"
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    return f"the check process exited with status {returncode}: {lines[-1] if lines else 'no output'}"


# Set once a load with llama.cpp's extra CPU buffers crashed and one without them did not:
# later files on this host skip the crashing attempt.
_HOST_NEEDS_PLAIN_BUFFERS = False
PLAIN_BUFFERS_NOTE = (
    "llama.cpp crashed evaluating this file with its extra CPU buffer types (AMX / repacked "
    "weights) on this host and ran it fine without them: the file is sound; on this machine "
    "load it with use_extra_bufts=False (tunegguf.export.verify_worker.load_llama)"
)
PLAIN_BUFFERS_EARLIER = (
    "checked without llama.cpp's extra CPU buffer types (AMX / repacked weights), which "
    "crashed llama.cpp on an earlier file on this host"
)
PLAIN_BUFFERS_PROBED = (
    "checked without llama.cpp's extra CPU buffer types (AMX / repacked weights): this host's "
    "kernel probe found them unsafe (`tunegguf doctor`)"
)


@dataclass
class _Batch:
    rows: list[dict[str, Any]]
    returncode: int | None
    stderr: str


def _run_worker(paths: list[Path], reference: dict[str, Any] | None, prompt_text: str | None, max_tokens: int,
                threads: int | None, timeout_s: float, extra_bufts: bool) -> _Batch:
    # Beside the files (under the run directory), where a kill's leftovers are cleaned up.
    with scratch_dir("tunegguf-verify", near=paths[0].parent) as tmp:
        out = Path(tmp) / "checks.jsonl"
        cmd = [sys.executable, "-m", "tunegguf.export.verify_worker", *map(str, paths), "--out", str(out),
               "--max-tokens", str(max_tokens)]
        if reference is not None:
            write_json(Path(tmp) / "reference.json", reference)
            cmd += ["--reference", str(Path(tmp) / "reference.json")]
        if prompt_text is not None:
            prompt_file = Path(tmp) / "prompt.txt"
            prompt_file.write_text(prompt_text, encoding="utf-8")
            cmd += ["--prompt-file", str(prompt_file)]
        if threads:
            cmd += ["--threads", str(threads)]
        if not extra_bufts:
            cmd.append("--no-extra-bufts")
        env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false")
        try:
            proc = processes.run(cmd, capture_output=True, text=True, errors="replace", env=env,
                                 timeout=timeout_s * len(paths))
            returncode, stderr = proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            returncode = None
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else str(exc.stderr or "")
        rows = read_jsonl(out) if out.is_file() else []
    return _Batch(rows, returncode, stderr)


def _checks_of(path: Path, batch: _Batch, timeout_s: float) -> tuple[list[Check], bool]:
    """This file's checks, the interrupted one marked failed; and whether it was interrupted."""
    done = {row["check"]: Check(row["check"], row["status"], row["detail"])
            for row in batch.rows if row.get("file") == str(path)}
    checks: list[Check] = []
    interrupted = False
    for name in CHECKS:
        if name in done:
            checks.append(done[name])
        elif not interrupted:
            interrupted = True
            checks.append(Check(name, "fail", _crash_reason(batch.returncode, batch.stderr, timeout_s)))
        else:
            checks.append(Check(name, "skip", "not run: the check process stopped earlier"))
    return checks, interrupted


def _killed_by_signal(checks: list[Check]) -> bool:
    return any(c.status == "fail" and "killed by" in c.detail for c in checks)


def verify_files(
    paths: list[Path],
    *,
    hf_dir: Path | None = None,
    prompt_text: str | None = None,
    max_tokens: int = 16,
    threads: int | None = None,
    timeout_s: float = 900,
    tokenizer: Any = None,
    extra_buffers: bool | None = None,
) -> list[VerifyResult]:
    """Verify several files with one child process (`tokenizer`: the HF tokenizer of
    `hf_dir` when the caller has it loaded already).

    A crash only costs the file being checked: a new child takes the remaining files. A
    crash of a file that loaded is retried once without llama.cpp's extra CPU buffer types
    (a llama.cpp bug on some CPUs, not a bad file); the result then carries a note.
    `extra_buffers=False` (a caller that has this host's kernel-probe verdict,
    tunegguf.evaluate.backends.kernels.cached_verdict) skips that crashing first attempt.
    """
    global _HOST_NEEDS_PLAIN_BUFFERS
    paths = [Path(p) for p in paths]
    for path in paths:
        if path.is_dir():
            raise TuneGGUFError(f"{path} is a directory, not a GGUF file; name one .gguf file in it "
                                "(`tunegguf evaluate --gguf-dir` takes a whole export directory)")
        if not path.is_file():
            raise TuneGGUFError(f"{path}: no such GGUF file")
    if hf_dir is not None and not (Path(hf_dir) / "tokenizer_config.json").is_file():
        raise TuneGGUFError(f"{hf_dir}: no tokenizer_config.json; --hf must be the HF checkpoint the GGUF came from")
    reference = None
    if hf_dir is not None:
        from tunegguf.export.verify_worker import hf_reference

        if tokenizer is None:
            from transformers import AutoTokenizer

            tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
        # The HF side is computed once, here: the child only needs llama.cpp.
        reference = hf_reference(tokenizer, prompt_text)
    results: dict[Path, VerifyResult] = {}
    pending = list(paths)
    retried: set[Path] = set()
    probed_unsafe = extra_buffers is False
    while pending:
        extra = not _HOST_NEEDS_PLAIN_BUFFERS and not probed_unsafe
        batch = _run_worker(pending, reference, prompt_text, max_tokens, threads, timeout_s, extra)
        for index, path in enumerate(pending):
            checks, interrupted = _checks_of(path, batch, timeout_s)
            if not interrupted:
                plain_note = PLAIN_BUFFERS_PROBED if probed_unsafe else PLAIN_BUFFERS_EARLIER
                notes = [plain_note] if not extra and checks[0].status == "pass" else []
                if path in retried:
                    notes = [PLAIN_BUFFERS_NOTE]
                results[path] = VerifyResult(str(path), checks, notes)
                continue
            if extra and _killed_by_signal(checks) and checks[0].status == "pass":
                # Loaded, then crashed while evaluating: try this file again without them.
                _HOST_NEEDS_PLAIN_BUFFERS = True
                retried.add(path)
                pending = pending[index:]
            else:
                results[path] = VerifyResult(str(path), checks)
                pending = pending[index + 1:]
            break
        else:
            pending = []
    return [results[p] for p in paths]


def verify_gguf(
    path: Path,
    *,
    hf_dir: Path | None = None,
    prompt_text: str | None = None,
    max_tokens: int = 16,
    threads: int | None = None,
    timeout_s: float = 900,
) -> VerifyResult:
    """Run every check on `path` in a child process and collect the results."""
    return verify_files([path], hf_dir=hf_dir, prompt_text=prompt_text, max_tokens=max_tokens,
                        threads=threads, timeout_s=timeout_s)[0]
