"""The checks on GGUF files, run in a child process (`python -m tunegguf.export.verify_worker`).

llama.cpp can abort or segfault on a damaged file; in a child that only loses the check
being run. Each finished check is appended to the --out JSONL file at once, so the parent
knows which file and check a crash interrupted (and restarts the child on the rest).
What the HF tokenizer says (ids of the test strings, rendered templates, special ids) is
computed once by the parent (`hf_reference`) and read from --reference: the child needs
only llama.cpp, so it starts in a fraction of a second.
Checks: the file loads; a BPE vocabulary names a known pre-tokenizer; BOS/EOS/EOT ids
equal the HF tokenizer's; ~50 strings and the prompt tokenize identically; the embedded
chat template renders like the HF one; a greedy completion of the prompt ends with an
end-of-turn token within the token budget.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

CHECKS = ("load", "pre_tokenizer", "special_tokens", "tokenizer", "chat_template", "stops_at_eos")

DEFAULT_QUESTION = "Answer with one word, yes or no: is the sky blue?"

# Strings whose tokenization differs first when a pre-tokenizer is wrong: digits, runs of
# whitespace, contractions, non-Latin scripts, emoji (multi-codepoint), code.
TOKENIZER_STRINGS = [
    "Hello world", "hello, world!", " leading space", "trailing space ", "  two leading", "a  b   c    d",
    "line one\nline two", "\n\nblank lines\n\n", "tab\tseparated\tvalues", "carriage\r\nreturn",
    "I'm sure you'll see they've done it", "DON'T SHOUT, it's RUDE", "0", "42", "123", "1234", "12345678901234",
    "3.14159", "1,000,000", "2026-11-25", "$19.99 or 50%", "v1.2.3", "-17 +3 1e-5",
    "café naïve résumé façade", "Größe Übermaß straße", "日本語のテキストです", "中文评论：很好看",
    "한국어 리뷰입니다", "Привет, как дела?", "مرحبا بالعالم", "שלום עולם", "Ελληνικά γράμματα",
    "emoji 😀😂🤣 ❤️ 👍🏽", "family 👨‍👩‍👧‍👦 flag 🇫🇷", "🚀🦙🦙 ✅", "math ∑∫√∞ ≠ ≤ ≥", "ﬁ ligature ½",
    "zero\u200bwidth", "non\u00a0breaking", "def f(x):\n    return x ** 2", "if (a && b) { c++; }",
    "<div class=\"x\">hi</div>", "user@example.com https://example.org/a?b=c", "------=======......!!!!!!",
    "''''''```````\"\"\"\"", "It's not bad... but it's not great either!",
    "this movie was absolutely wonderful , i loved every minute",
    "Worst purchase EVER!!! Broke after 2 days :(",
]

CONVERSATIONS = [
    ([{"role": "user", "content": "Hello!"}], True),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Is 2+2 4?"}], True),
    ([{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Is 2+2 4?"},
      {"role": "assistant", "content": "Yes."}], False),
]


def hf_reference(tokenizer: Any, prompt: str | None) -> dict[str, Any]:
    """Everything the checks compare against, from the HF tokenizer (run in the parent)."""
    template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if prompt is None and template:
        messages = [{"role": "user", "content": DEFAULT_QUESTION}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    specials = [t for t in (tokenizer.bos_token, tokenizer.eos_token) if t]
    strings = TOKENIZER_STRINGS + [f"{s}user\nhello{s}" for s in specials] + ([prompt] if prompt else [])
    renders = []
    for messages, generation in CONVERSATIONS:
        try:
            renders.append({"text": tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation)
                            if template else None, "error": None})
        except Exception as exc:  # a template that rejects a role (system) must do it in both
            renders.append({"text": None, "error": str(exc).splitlines()[0] if str(exc) else type(exc).__name__})
    return {
        "bos_id": tokenizer.bos_token_id, "bos_token": tokenizer.bos_token,
        "eos_id": tokenizer.eos_token_id, "eos_token": tokenizer.eos_token,
        "chat_template": template, "prompt": prompt, "strings": strings,
        "ids": [tokenizer(s, add_special_tokens=False)["input_ids"] for s in strings],
        "renders": renders,
    }


class Context:
    """What the checks share: the loaded model, the HF reference, the prompt."""

    def __init__(self, path: Path, ref: dict[str, Any] | None, prompt: str | None, max_tokens: int, threads: int,
                 extra_bufts: bool = True):
        self.path, self.ref, self.prompt_arg = path, ref, prompt
        self.max_tokens, self.threads, self.extra_bufts = max_tokens, threads, extra_bufts
        self.llm: Any = None
        self.header: Any = None

    def text(self, token_id: int | None) -> str:
        if token_id is None or token_id < 0:
            return "none"
        return self.llm.detokenize([token_id], special=True).decode("utf-8", errors="replace")

    def tokenize(self, text: str) -> list[int]:
        return self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)

    def gguf_specials(self) -> dict[str, str]:
        return {"bos_token": self.text(self.llm.token_bos()), "eos_token": self.text(self.llm.token_eos())}

    def prompt(self) -> str:
        """The prompt to complete: given, else a short question in the HF template (or the
        GGUF's when there is no HF tokenizer)."""
        if self.prompt_arg is not None:
            return self.prompt_arg
        if self.ref is not None and self.ref.get("prompt"):
            return self.ref["prompt"]
        messages = [{"role": "user", "content": DEFAULT_QUESTION}]
        template = self.llm.metadata.get("tokenizer.chat_template")
        if template:
            from tunegguf.prompts.templates import render_chat_template

            return render_chat_template(template, messages, add_generation_prompt=True, special_tokens=self.gguf_specials())
        return f"Question: {DEFAULT_QUESTION}\nAnswer:"


Result = tuple[str, str]  # (status, detail)


def load_llama(path: Path, *, n_threads: int, extra_bufts: bool = True, n_ctx: int = 2048) -> Any:
    """llama_cpp.Llama on the CPU; `extra_bufts=False` turns off llama.cpp's extra CPU
    buffer types (AMX / repacked weights), whose kernels segfault on quantized models on
    some CPUs with llama-cpp-python 0.3.36 (seen on a Xeon with AMX). Llama() has no
    argument for it, so the default-params function is wrapped for this one call."""
    import llama_cpp
    import llama_cpp.llama as llama_module

    from tunegguf.console import quiet_llama_cpp

    quiet_llama_cpp()
    original = llama_module.llama_cpp.llama_model_default_params

    def params() -> Any:
        p = original()
        p.use_extra_bufts = extra_bufts
        return p

    llama_module.llama_cpp.llama_model_default_params = params
    try:
        return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_batch=512, n_threads=n_threads, n_gpu_layers=0, verbose=False)
    finally:
        llama_module.llama_cpp.llama_model_default_params = original


def check_load(ctx: Context) -> Result:
    from tunegguf.export.gguf_file import check_complete, read_header

    ctx.header = read_header(ctx.path)
    check_complete(ctx.header)
    try:
        ctx.llm = load_llama(ctx.path, n_threads=ctx.threads, extra_bufts=ctx.extra_bufts)
    except Exception as exc:  # llama-cpp-python raises ValueError with little detail
        return "fail", f"llama.cpp could not load it: {exc}"
    fields = ctx.header.fields
    return "pass", (
        f"{fields.get('general.architecture')}, {len(ctx.header.tensors)} tensors, "
        f"{ctx.llm.n_vocab()} tokens, {ctx.header.file_size / 1e6:.1f} MB"
    )


def check_pre_tokenizer(ctx: Context) -> Result:
    fields = ctx.header.fields
    model, pre = fields.get("tokenizer.ggml.model"), fields.get("tokenizer.ggml.pre")
    if model != "gpt2":
        return "pass", f"tokenizer model {model!r} has no pre-tokenizer choice"
    if not pre or pre == "default":
        return "fail", (
            f"tokenizer.ggml.pre is {pre!r}: llama.cpp would split text with its default regex, "
            "not the model's, and tokenize differently from Transformers"
        )
    return "pass", f"tokenizer.ggml.pre = {pre!r}"


def _eog(ctx: Context, token_id: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(ctx.llm.model), token_id))


def check_special_tokens(ctx: Context) -> Result:
    bos, eos, eot = ctx.llm.token_bos(), ctx.llm.token_eos(), ctx.llm._model.token_eot()
    found = f"BOS {bos} {ctx.text(bos)}, EOS {eos} {ctx.text(eos)}, EOT {eot} {ctx.text(eot)}"
    if ctx.ref is None:
        return "skip", f"{found}; no HF tokenizer to compare with"
    ref = ctx.ref
    problems = []
    if eos != ref["eos_id"]:
        problems.append(f"GGUF EOS is {eos} {ctx.text(eos)}, the HF end-of-turn token is {ref['eos_id']} {ref['eos_token']}")
    if eot not in (-1, ref["eos_id"]):
        problems.append(f"GGUF EOT is {eot} {ctx.text(eot)}, not the HF end-of-turn token {ref['eos_id']}")
    if ref["eos_id"] is not None and not _eog(ctx, ref["eos_id"]):
        problems.append(f"llama.cpp does not end generation at {ref['eos_token']}")
    if ref["bos_id"] is not None and bos != ref["bos_id"]:
        problems.append(f"GGUF BOS is {bos} {ctx.text(bos)}, HF BOS is {ref['bos_id']} {ref['bos_token']}")
    return ("fail", "; ".join(problems)) if problems else ("pass", found)


def check_tokenizer(ctx: Context) -> Result:
    if ctx.ref is None:
        return "skip", "no HF tokenizer to compare with"
    strings, expected = list(ctx.ref["strings"]), list(ctx.ref["ids"])
    bad = []
    for text, hf_ids in zip(strings, expected):
        cpp_ids = ctx.tokenize(text)
        if hf_ids != cpp_ids:
            bad.append((text, hf_ids, cpp_ids))
    if bad:
        text, hf_ids, cpp_ids = bad[0]
        return "fail", (
            f"{len(bad)} of {len(strings)} strings tokenize differently; first {text[:40]!r}: "
            f"HF {hf_ids[:10]}, llama.cpp {cpp_ids[:10]}"
        )
    return "pass", f"{len(strings)} strings (unicode, emoji, digits, whitespace, the prompt) give the same ids"


def check_chat_template(ctx: Context) -> Result:
    from tunegguf.errors import TuneGGUFError
    from tunegguf.prompts.templates import render_chat_template

    template = ctx.llm.metadata.get("tokenizer.chat_template")
    hf_template = ctx.ref["chat_template"] if ctx.ref is not None else None
    if not template:
        if ctx.ref is not None and not hf_template:
            return "pass", "neither the GGUF nor the HF tokenizer has a chat template"
        return "fail", "the GGUF has no chat template (tokenizer.chat_template)"
    compared = 0
    for index, (messages, generation) in enumerate(CONVERSATIONS):
        try:
            ours: str | None = render_chat_template(template, messages, add_generation_prompt=generation,
                                                    special_tokens=ctx.gguf_specials())
        except TuneGGUFError:
            ours = None
        if hf_template is None:
            if ours is None and index == 0:
                return "fail", "the GGUF chat template does not render a one-message conversation"
            continue
        theirs = ctx.ref["renders"][index]["text"]
        if (ours is None) != (theirs is None):
            return "fail", f"with roles {[m['role'] for m in messages]} one template renders and the other fails"
        if ours is None:
            continue
        if ours != theirs:
            at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
            return "fail", f"renders differently from the HF template at character {at}: GGUF {ours[at:at + 30]!r}, HF {theirs[at:at + 30]!r}"
        compared += 1
    if hf_template is None:
        return "skip", "the GGUF template renders; no HF tokenizer to compare with"
    return "pass", f"renders {compared} conversations exactly like the HF template"


def check_stops_at_eos(ctx: Context) -> Result:
    prompt_ids = ctx.tokenize(ctx.prompt())
    generated: list[int] = []
    stop = None
    ctx.llm.reset()
    for token in ctx.llm.generate(prompt_ids, temp=0.0, top_k=1, repeat_penalty=1.0):
        if _eog(ctx, token):
            stop = token
            break
        generated.append(token)
        if len(generated) >= ctx.max_tokens:
            break
    text = ctx.llm.detokenize(generated, special=True).decode("utf-8", errors="replace")
    if stop is None:
        return "fail", (
            f"no end-of-turn token within {ctx.max_tokens} tokens of greedy decoding; generated {text[:80]!r}: "
            "the model never learned to stop, or the GGUF's EOS/EOT is wrong"
        )
    return "pass", f"stopped at {ctx.text(stop)} ({stop}) after {len(generated)} tokens: {text[:60]!r}"


FUNCTIONS: dict[str, Callable[[Context], Result]] = {
    "load": check_load, "pre_tokenizer": check_pre_tokenizer, "special_tokens": check_special_tokens,
    "tokenizer": check_tokenizer, "chat_template": check_chat_template, "stops_at_eos": check_stops_at_eos,
}


def run_file(path: Path, ref: dict[str, Any] | None, args: argparse.Namespace, prompt: str | None, out: Path) -> None:
    """All checks on one file; each result is appended to `out` as soon as it is known."""
    from tunegguf.errors import TuneGGUFError
    from tunegguf.io import append_jsonl

    ctx = Context(path, ref, prompt, args.max_tokens, args.threads, extra_bufts=not args.no_extra_bufts)
    # Tests: TUNEGGUF_VERIFY_CRASH_AT=check[@file-name-part] kills this process there, the
    # way a llama.cpp segfault would.
    crash_check, _, crash_file = os.environ.get("TUNEGGUF_VERIFY_CRASH_AT", "").partition("@")
    for name in CHECKS:
        if name == crash_check and crash_file in path.name:
            os.kill(os.getpid(), signal.SIGSEGV)
        if name != "load" and ctx.llm is None:
            status, detail = "skip", "not run: the file did not load"
        else:
            try:
                status, detail = FUNCTIONS[name](ctx)
            except TuneGGUFError as exc:
                status, detail = "fail", str(exc)
            except Exception as exc:  # report, and go on with the other checks
                status, detail = "fail", f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        append_jsonl(out, {"file": str(path), "check": name, "status": status, "detail": detail})
    if ctx.llm is not None:
        ctx.llm.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tunegguf.export.verify_worker")
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True, help="JSONL file, one line per finished check")
    parser.add_argument("--reference", type=Path, default=None, help="JSON from hf_reference()")
    parser.add_argument("--prompt-file", type=Path, default=None)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--threads", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--no-extra-bufts", action="store_true", help="load without AMX / repacked CPU buffers")
    args = parser.parse_args(argv)
    prompt = args.prompt_file.read_text(encoding="utf-8") if args.prompt_file else None
    ref = json.loads(args.reference.read_text(encoding="utf-8")) if args.reference else None
    for path in args.files:
        run_file(path, ref, args, prompt, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
