"""What a user sees on the terminal: tunegguf's own lines and progress bars, nothing else.

Every stage takes a `log` (default `say`): one line at a time on stderr, written through
tqdm so a live progress bar stays intact. What a command prints as its result (verdicts,
paths) goes to stdout through click.

`quiet_third_party()` silences, at their source, library messages that tell a tunegguf
user nothing: each entry below names the message it removes. Real warnings (Unsloth's
import order, out-of-memory advice, llama.cpp errors) are left alone.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import sys
from typing import Callable, Iterator

Log = Callable[[str], None]
"""How a stage reports progress: called with one line, no trailing newline."""


def say(line: str) -> None:
    """The default `log`: the line on stderr, above any live tqdm progress bar."""
    from tqdm.auto import tqdm

    tqdm.write(line, file=sys.stderr)


# Library loggers whose warnings are noise for a tunegguf user, with why.
_QUIET_LOGGERS = {
    # torchao registers Enum constants on import: "<enum 'KernelPreference'> is an Enum
    # subclass and is now natively supported by torch.compile ... deprecated".
    "torch.utils._pytree": logging.ERROR,
    # torchao: "Failed to load .../_C*.so" for CPU/CUDA kernels it does not need here.
    "torchao": logging.ERROR,
    # bitsandbytes: "Register pytorch bitsandbytes kernels for ... no native library".
    "bitsandbytes": logging.ERROR,
}

_quieted = False


def quiet_third_party() -> None:
    """Silence the known noise of torch, torchao, bitsandbytes and datasets (idempotent).

    Call it before those libraries are imported: the loggers are configured by name, so
    the setting is in place when their import-time warnings fire.
    """
    global _quieted
    if _quieted:
        return
    _quieted = True
    for name, level in _QUIET_LOGGERS.items():
        logging.getLogger(name).setLevel(level)
    # TRL prepares the training set with datasets.map: three bars ("Building labels",
    # "Truncating", "Dropping fully masked examples") for a step of a second or two.
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    if "datasets" in sys.modules:  # imported already: the variable is read on import
        sys.modules["datasets"].disable_progress_bars()


# llama.cpp lines printed at error level that are not errors for tunegguf: the context is
# sized by tunegguf (prompt lengths are checked against it before scoring).
_LLAMA_CPP_NOISE = re.compile(r"n_ctx_seq \(\d+\) > n_ctx_train \(\d+\)")
_llama_log_callback = None  # kept alive: llama.cpp holds a raw pointer to it


def quiet_llama_cpp() -> None:
    """Forward only llama.cpp's real errors to stderr (call after importing llama_cpp)."""
    global _llama_log_callback
    if _llama_log_callback is not None:
        return
    import ctypes

    import llama_cpp

    error_level = 3  # GGML_LOG_LEVEL_ERROR; 5 continues the previous line
    last_level = [0]

    @llama_cpp.llama_log_callback
    def forward(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
        level = last_level[0] if level == 5 else level
        last_level[0] = level
        line = text.decode("utf-8", "replace")
        if level == error_level and not _LLAMA_CPP_NOISE.search(line):
            print(line, end="", file=sys.stderr, flush=True)

    _llama_log_callback = forward
    llama_cpp.llama_log_set(forward, ctypes.c_void_p(0))


@contextlib.contextmanager
def captured_stdout(log: Log | None = None, keep: re.Pattern[str] | None = None) -> Iterator[io.StringIO]:
    """Hold a library's banner prints back; lines matching `keep` still reach `log`."""
    buffer = io.StringIO()
    try:
        with contextlib.redirect_stdout(buffer):
            yield buffer
    finally:
        if log is not None and keep is not None:
            for line in buffer.getvalue().splitlines():
                if keep.search(line):
                    log(line.strip())
