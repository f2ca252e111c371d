"""Ollama Modelfiles: FROM the GGUF, a Go TEMPLATE equivalent to the chat template, stops.

The HF (Jinja) template is probed with marker messages; when it renders exactly as a
ChatML or a Llama 3 template would (allowing a default system prompt and a fixed
system-prompt preamble such as Llama 3.1's dates), the same text is written as an Ollama
Go template and checked by rendering both. Anything else gets no TEMPLATE line and a
note: Ollama then falls back to the template embedded in the GGUF, if it recognizes it.
`read_modelfile` reads a Modelfile's TEMPLATE, SYSTEM and stops back (for the template checks).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tunegguf.io import atomic_write_text
from tunegguf.prompts.templates import render_chat_template

SYS, USER = "SYSTEM_MARKER_7F3A", "USER_MARKER_9C1D"


@dataclass(frozen=True)
class TurnFormat:
    """The literal pieces of a chat format around the system, user and assistant text."""

    name: str
    system_open: str
    user_open: str
    close: str
    assistant_open: str


FORMATS = [
    TurnFormat("chatml", "<|im_start|>system\n", "<|im_start|>user\n", "<|im_end|>\n", "<|im_start|>assistant\n"),
    TurnFormat(
        "llama3", "<|start_header_id|>system<|end_header_id|>\n\n", "<|start_header_id|>user<|end_header_id|>\n\n",
        "<|eot_id|>", "<|start_header_id|>assistant<|end_header_id|>\n\n",
    ),
]


@dataclass(frozen=True)
class GoTemplate:
    format: TurnFormat
    leading: str
    """Text before everything (a BOS the template writes and llama.cpp would not add)."""
    system_prefix: str
    """Fixed text the template puts before any system message (Llama 3.1's dates)."""
    default_system_block: str
    """What the template writes when there is no system message ('' or a whole turn)."""

    def render(self, system: str | None, user: str) -> str:
        """What Ollama renders with this template, in Python (used to check it)."""
        f = self.format
        block = f"{f.system_open}{self.system_prefix}{system}{f.close}" if system else self.default_system_block
        return f"{self.leading}{block}{f.user_open}{user}{f.close}{f.assistant_open}"

    def text(self) -> str:
        f = self.format
        # Ollama's .Messages form (system messages arrive as .System); the last user turn
        # opens the assistant turn, as add_generation_prompt does.
        return (
            f"{self.leading}{{{{ if .System }}}}{f.system_open}{self.system_prefix}{{{{ .System }}}}{f.close}"
            f"{{{{ else }}}}{self.default_system_block}{{{{ end }}}}"
            "{{ range $i, $_ := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
            f'{{{{ if eq .Role "user" }}}}{f.user_open}{{{{ .Content }}}}{f.close}{{{{ if $last }}}}{f.assistant_open}{{{{ end }}}}'
            f'{{{{ else if eq .Role "assistant" }}}}{f.assistant_open}{{{{ .Content }}}}{{{{ if not $last }}}}{f.close}{{{{ end }}}}'
            "{{ end }}{{ end }}"
        )


def _render(template: str, specials: dict[str, str], system: str | None, user: str) -> str:
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
    return render_chat_template(template, messages, add_generation_prompt=True, special_tokens=specials)


def go_template(chat_template: str, specials: dict[str, str], gguf_adds_bos: bool) -> GoTemplate | None:
    """A Go template equivalent to `chat_template` for one system + one user turn, or None."""
    try:
        with_system = _render(chat_template, specials, SYS, USER)
        without = _render(chat_template, specials, None, USER)
    except Exception:  # a template that rejects the probe (e.g. no system role)
        return None
    bos = specials.get("bos_token") or ""
    probes = [(SYS, USER), (None, USER), ("Be brief.", "Line one\nline two")]
    # SmolLM2's BOS is <|im_start|> itself, so "no leading BOS" is tried too.
    for fmt, leading in ((f, lead) for f in FORMATS for lead in dict.fromkeys([bos, ""])):
        if not with_system.startswith(leading + fmt.system_open) or f"{SYS}{fmt.close}" not in with_system:
            continue
        start = len(leading + fmt.system_open)
        prefix = with_system[start:with_system.index(f"{SYS}{fmt.close}")]
        tail = f"{fmt.user_open}{USER}{fmt.close}{fmt.assistant_open}"
        if not without.startswith(leading) or not without.endswith(tail):
            continue
        default_block = without[len(leading):len(without) - len(tail)]
        # llama.cpp / Ollama add BOS themselves when the GGUF says so: not in the template too.
        added = leading if (gguf_adds_bos and leading == bos) else ""
        candidate = GoTemplate(fmt, leading[len(added):], prefix, default_block)
        if all(added + candidate.render(s, u) == _render(chat_template, specials, s, u) for s, u in probes):
            return candidate
    return None


def modelfile_text(gguf_name: str, *, chat_template: str | None, specials: dict[str, str], gguf_adds_bos: bool,
                   stop_tokens: list[str], system_prompt: str | None, classifier: bool) -> str:
    lines = [
        f"# Ollama Modelfile for {gguf_name}, written by tunegguf.",
        f"# ollama create <name> -f Modelfile.<QUANT>   (FROM is relative to this file)",
        f"FROM ./{gguf_name}",
    ]
    template = go_template(chat_template, specials, gguf_adds_bos) if chat_template else None
    if template is not None:
        lines.append(f'TEMPLATE """{template.text()}"""')
    else:
        lines.append(
            "# NOTE: the chat template is neither ChatML nor Llama 3, so no Go TEMPLATE was written; "
            "Ollama uses the template embedded in the GGUF when it recognizes it (check `ollama show --template`)."
        )
    if system_prompt:
        lines.append(f'SYSTEM """{system_prompt}"""')
    for token in dict.fromkeys(t for t in stop_tokens if t):
        lines.append(f'PARAMETER stop "{token}"')
    if classifier:
        lines.append("# A classifier: greedy decoding, so Ollama answers like the parity report measured.")
        lines.append("PARAMETER temperature 0")
    return "\n".join(lines) + "\n"


def stop_tokens(tokenizer: Any, generation_eos: Any) -> list[str]:
    """The end-of-turn token first, then every other EOS of the generation config."""
    ids = generation_eos if isinstance(generation_eos, list) else ([generation_eos] if generation_eos is not None else [])
    tokens = [tokenizer.eos_token] + [tokenizer.convert_ids_to_tokens(int(i)) for i in ids]
    return [t for t in dict.fromkeys(tokens) if t]


def write_modelfile(path: Path, gguf_name: str, **kwargs: Any) -> Path:
    atomic_write_text(path, modelfile_text(gguf_name, **kwargs))
    return path


@dataclass
class Modelfile:
    template: str | None
    system: str | None
    stops: list[str]


def read_modelfile(path: str | Path) -> Modelfile:
    """TEMPLATE, SYSTEM and `PARAMETER stop` lines of an Ollama Modelfile."""
    text = Path(path).read_text(encoding="utf-8")

    def directive(name: str) -> str | None:
        m = re.search(rf'^{name}\s+"""(.*?)"""', text, re.MULTILINE | re.DOTALL | re.IGNORECASE)
        if m:
            return m.group(1)
        m = re.search(rf'^{name}\s+(?!""")(.+)$', text, re.MULTILINE | re.IGNORECASE)
        return m.group(1).strip().strip('"') if m else None

    stops = [m.group(1) or m.group(2) for m in re.finditer(
        r'^PARAMETER\s+stop\s+(?:"((?:[^"\\]|\\.)*)"|(\S+))\s*$', text, re.MULTILINE | re.IGNORECASE)]
    return Modelfile(directive("TEMPLATE"), directive("SYSTEM"), stops)
