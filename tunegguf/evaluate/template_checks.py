"""Templates and tokens end to end: does every runtime render the prompt, the BOS and the
stop tokens the way the model was trained?

One conversation is rendered through the HF tokenizer, the template embedded in the GGUF
(as llama-cpp-python applies it) and the Ollama Modelfile, and diffed against the
training prompt. A fixed multi-turn conversation (system, user, assistant, user) goes
through the same three, since a template can agree on one turn and still drop or reorder
earlier turns (the chat fine-tune's "answers differently after the first turn").
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

from tunegguf.evaluate.backends.llamacpp import gguf_problem
from tunegguf.evaluate.stages import is_unquantized
from tunegguf.export.go_template import GoTemplateError, ollama_data, render_go_template
from tunegguf.export.modelfile import read_modelfile

@dataclass
class Check:
    name: str
    passed: bool | None
    """None: could not be checked here (the detail says why)."""
    detail: str


@dataclass
class TemplateChecks:
    gguf: str
    modelfile: str | None
    renderings: dict[str, str]
    """Source -> the prompt text it renders for the same conversation."""
    diffs: dict[str, str]
    """"A vs B" -> unified diff, for every rendering that differs from the training prompt."""
    token_ids: dict[str, list[int]]
    """Source -> the first token ids each runtime would feed."""
    checks: list[Check] = field(default_factory=list)
    conversation: list[dict[str, str]] = field(default_factory=list)
    """The multi-turn conversation every runtime rendered (CONVERSATION)."""
    multi_turn_renderings: dict[str, str] = field(default_factory=dict)
    """Source -> the prompt text it renders for `conversation` (generation prompt added)."""
    multi_turn_reference: str | None = None
    """The source the others are compared with: the training renderer when it renders
    conversations, else the HF template, else the GGUF's."""
    multi_turn_diffs: dict[str, str] = field(default_factory=dict)
    """"reference vs source" -> unified diff, for every multi-turn rendering that differs."""

    @property
    def passed(self) -> bool:
        return all(c.passed is not False for c in self.checks)

    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.passed is False]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["passed"] = self.passed
        return data


TRAINING = "training prompt"
HF_TEMPLATE = "HF apply_chat_template"
GGUF_TEMPLATE = "GGUF template (llama-cpp-python)"
MODELFILE = "Ollama Modelfile TEMPLATE"

CONVERSATION: tuple[dict[str, str], ...] = (
    {"role": "system", "content": "You are a careful assistant. Answer briefly."},
    {"role": "user", "content": "Reverse the word cat."},
    {"role": "assistant", "content": "tac"},
    {"role": "user", "content": "Now sort these numbers:\n3, 1, 2"},
)
"""Fixed, so every report checks the same thing: a system turn, an earlier assistant turn
(templates that drop or re-wrap history differ there) and a multi-line user turn."""


def _unified(a_name: str, a: str, b_name: str, b: str) -> str:
    lines = difflib.unified_diff(a.splitlines(keepends=True), b.splitlines(keepends=True), a_name, b_name)
    return "".join(line if line.endswith("\n") else line + "\n" for line in lines)


def _leading(ids: Sequence[int], token: int | None) -> int:
    count = 0
    while token is not None and count < len(ids) and ids[count] == token:
        count += 1
    return count


def _gguf_vocab(gguf_path: Path) -> dict[str, Any]:
    """Tokenizer facts of a GGUF as llama.cpp sees them (vocab-only load: no weights, no compute)."""
    import llama_cpp

    from tunegguf.console import quiet_llama_cpp

    quiet_llama_cpp()  # a vocab-only load still logs "n_ctx_seq > n_ctx_train (0)" as an error
    llm = llama_cpp.Llama(model_path=str(gguf_path), vocab_only=True, verbose=False)
    try:
        vocab = llm._model.vocab
        n = int(llm.n_vocab())
        meta = dict(llm.metadata)
        eos, bos = int(llm.token_eos()), int(llm.token_bos())
        eog = [t for t in range(n) if llama_cpp.llama_vocab_is_eog(vocab, t)]
        text = lambda t: llm._model.token_get_text(t) if t >= 0 else ""  # noqa: E731
        return {
            "llm": llm, "metadata": meta, "eos_id": eos, "bos_id": bos, "eos_token": text(eos), "bos_token": text(bos),
            "eog_ids": eog, "eog_tokens": [text(t) for t in eog],
            "add_bos": str(meta.get("tokenizer.ggml.add_bos_token", "false")).lower() == "true",
            "chat_template": meta.get("tokenizer.chat_template"),
        }
    except Exception:
        llm.close()
        raise


def template_checks(
    hf_dir: str | Path,
    gguf_path: str | Path,
    modelfile_path: str | Path | None,
    prompt_config: Any,
    labels: Sequence[str],
    sample_example: Any,
) -> TemplateChecks:
    """Render one conversation through every runtime's template and check BOS and stops.

    The reference is the training prompt (PromptRenderer, what fine-tuning and the parity
    scores fed). Each runtime's rendering is diffed against it; the token ids each runtime
    would feed are checked for a doubled BOS; the end-of-turn token the targets end with
    must be among each runtime's stop tokens.
    """
    from transformers import AutoTokenizer

    from tunegguf.prompts.renderer import PromptRenderer, TemplateTokens

    tokenizer = AutoTokenizer.from_pretrained(str(hf_dir))
    tokens = TemplateTokens.from_hf_tokenizer(tokenizer)
    renderer = PromptRenderer(prompt_config, tokens, list(labels))
    messages = renderer.messages(sample_example)
    renderings = {TRAINING: renderer.render(sample_example).prompt}
    checks: list[Check] = []
    if isinstance(tokenizer.chat_template, str):
        renderings[HF_TEMPLATE] = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    gguf = _gguf_vocab(Path(gguf_path))
    llm = gguf.pop("llm")
    try:
        added_special = True
        if gguf["chat_template"]:
            from llama_cpp.llama_chat_format import Jinja2ChatFormatter

            # Built exactly as Llama.__init__ builds its default chat handler.
            formatter = Jinja2ChatFormatter(template=gguf["chat_template"], eos_token=gguf["eos_token"],
                                            bos_token=gguf["bos_token"], stop_token_ids=[gguf["eos_id"]])
            result = formatter(messages=messages)
            renderings[GGUF_TEMPLATE] = result.prompt
            added_special = bool(result.added_special)
            chat_stops = list(result.stop if isinstance(result.stop, list) else [result.stop])
        else:
            checks.append(Check("gguf_has_chat_template", False,
                                "the GGUF embeds no tokenizer.chat_template: chat runtimes fall back to a guess"))
            chat_stops = []
        modelfile = read_modelfile(modelfile_path) if modelfile_path else None
        if modelfile is not None and modelfile.template is not None:
            try:
                renderings[MODELFILE] = render_go_template(modelfile.template, ollama_data(messages, modelfile.system))
            except (GoTemplateError, TypeError, IndexError, KeyError) as exc:
                checks.append(Check("modelfile_template_renders", None, f"could not render the TEMPLATE here: {exc}"))

        multi = _multi_turn(renderer, tokenizer, gguf, modelfile)
        multi_checks = multi.pop("checks")  # listed after the single-turn checks below

        # 1. Every runtime's text equals the training prompt.
        diffs: dict[str, str] = {}
        training = renderings[TRAINING]
        for source, text in renderings.items():
            if source == TRAINING:
                continue
            same = text == training
            if not same:
                diffs[f"{TRAINING} vs {source}"] = _unified(TRAINING, training, source, text)
            checks.append(Check(f"{_slug(source)}_matches_training", same,
                                "identical" if same else f"renders differently (see diff '{TRAINING} vs {source}')"))
        if modelfile is not None and modelfile.template is None:
            checks.append(Check("modelfile_has_template", None,
                                "no TEMPLATE: Ollama uses the GGUF's template if it recognizes it"))

        # 2. Leading BOS in the ids each runtime feeds.
        hf_bos = tokenizer.bos_token_id
        ids = {TRAINING + " (HF ids)": tokenizer(training, add_special_tokens=False)["input_ids"]}
        if GGUF_TEMPLATE in renderings:
            text = renderings[GGUF_TEMPLATE].encode("utf-8")
            # llama-cpp-python's chat path: add_bos = not added_special (True for Jinja2 templates).
            ids["llama-cpp-python chat"] = llm.tokenize(text, add_bos=not added_special, special=True)
            # llama.cpp honouring the file's add_bos_token (llama-server, llama-cli, Ollama).
            # The same text sent as a raw prompt to llama.cpp honouring the file's add_bos_token
            # (llama-server /completion, llama-cli -p).
            ids["raw prompt, add_bos from metadata"] = llm.tokenize(text, add_bos=gguf["add_bos"], special=True)
        if MODELFILE in renderings:
            ids["Ollama (Modelfile, add_bos from metadata)"] = llm.tokenize(
                renderings[MODELFILE].encode("utf-8"), add_bos=gguf["add_bos"], special=True)
        trained_bos = _leading(ids[TRAINING + " (HF ids)"], hf_bos if hf_bos is not None else gguf["bos_id"])
        for source, seq in ids.items():
            bos_id = gguf["bos_id"] if source != TRAINING + " (HF ids)" else (hf_bos if hf_bos is not None else gguf["bos_id"])
            count = _leading(seq, bos_id)
            ok = count <= 1 and count == trained_bos
            what = "double BOS" if count > 1 else ("BOS missing" if count < trained_bos else
                                                    ("BOS added" if count > trained_bos else "as trained"))
            checks.append(Check(f"bos_{_slug(source)}", ok,
                                f"{count} leading BOS (training fed {trained_bos}): {what}; first ids {list(seq[:6])}"))

        # 3. The training targets' end-of-turn token stops every runtime.
        eos = tokens.eos_token
        checks.append(Check("stop_gguf_eog", eos in gguf["eog_tokens"],
                            f"{eos!r} {'is' if eos in gguf['eog_tokens'] else 'is NOT'} an end-of-generation token of "
                            f"the GGUF (EOS {gguf['eos_token']!r}, EOG {gguf['eog_tokens']})"))
        if gguf["chat_template"]:
            checks.append(Check("stop_llama_cpp_python_chat", eos in chat_stops or eos in gguf["eog_tokens"],
                                f"chat stop strings {chat_stops}, stop ids = EOG tokens"))
        if modelfile is not None:
            ok = eos in modelfile.stops
            checks.append(Check("stop_modelfile", ok, f"PARAMETER stop lines {modelfile.stops}"
                                + ("" if ok else f"; add PARAMETER stop \"{eos}\"")))
        checks += multi_checks
    finally:
        llm.close()
    return TemplateChecks(
        gguf=str(gguf_path), modelfile=str(modelfile_path) if modelfile_path else None, renderings=renderings,
        diffs=diffs, token_ids={k: list(v[:12]) for k, v in ids.items()}, checks=checks,
        conversation=[dict(m) for m in CONVERSATION], **multi,
    )


def _multi_turn(renderer: Any, tokenizer: Any, gguf: dict[str, Any], modelfile: Any) -> dict[str, Any]:
    """CONVERSATION through the training renderer (when it renders conversations), the HF
    template, the GGUF's template and the Modelfile TEMPLATE; each compared with the first
    of those that rendered, with a unified diff when it differs."""
    messages = [dict(m) for m in CONVERSATION]
    renderings: dict[str, str] = {}
    checks: list[Check] = []

    def attempt(source: str, render: Any) -> None:
        try:
            renderings[source] = render()
        except Exception as exc:  # a template that rejects the conversation is a finding, not a crash
            checks.append(Check(f"multi_turn_{_slug(source)}_renders", False,
                                f"cannot render a system/user/assistant/user conversation: {' '.join(str(exc).split())[:200]}"))

    training = _training_conversation(renderer, messages)
    if training is not None:
        attempt(TRAINING, training)
    if isinstance(tokenizer.chat_template, str):
        attempt(HF_TEMPLATE, lambda: tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    if gguf["chat_template"]:
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        formatter = Jinja2ChatFormatter(template=gguf["chat_template"], eos_token=gguf["eos_token"],
                                        bos_token=gguf["bos_token"], stop_token_ids=[gguf["eos_id"]])
        attempt(GGUF_TEMPLATE, lambda: formatter(messages=messages).prompt)
    if modelfile is not None and modelfile.template is not None:
        try:
            renderings[MODELFILE] = render_go_template(modelfile.template, ollama_data(messages, modelfile.system))
        except (GoTemplateError, TypeError, IndexError, KeyError) as exc:
            checks.append(Check("multi_turn_modelfile_template_renders", None, f"could not render the TEMPLATE here: {exc}"))
    reference = next(iter(renderings), None)
    diffs: dict[str, str] = {}
    for source, text in renderings.items():
        if source == reference:
            continue
        same = text == renderings[reference]
        if not same:
            diffs[f"{reference} vs {source}"] = _unified(reference, renderings[reference], source, text)
        checks.append(Check(f"multi_turn_{_slug(source)}_matches_{_slug(reference)}", same,
                            "identical for a system/user/assistant/user conversation" if same else
                            f"renders the conversation differently (see multi-turn diff '{reference} vs {source}')"))
    return {"multi_turn_renderings": renderings, "multi_turn_reference": reference,
            "multi_turn_diffs": diffs, "checks": checks}


def _training_conversation(renderer: Any, messages: list[dict[str, str]]) -> Any:
    """A callable rendering `messages` as training does, or None for alpaca (single-turn)."""
    from tunegguf.data.example import Example

    if renderer.config.format == "alpaca":
        return None
    # A conversation ending with the user turn renders as the whole prompt.
    example = Example(id="multi-turn check", messages=messages)
    return lambda: renderer.render(example).prompt


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def template_checks_for_run(hf_dir: str | Path, files: dict[str, Path], modelfiles: dict[str, Path],
                            prompt_config: Any, labels: Sequence[str], sample_example: Any) -> dict[str, Any] | None:
    """Template checks on one GGUF of the run (the unquantized one when there is one: every
    quant shares its tokenizer and template). A file llama.cpp cannot load is a failed
    check and the next file is tried; any other failure to check is reported, not raised.
    The result always has the keys of `TemplateChecks.to_dict()`, plus "name" (and "error"
    when the checks could not run)."""
    if not files:
        return None
    # Unquantized first (sorted is stable: otherwise in the order given).
    order = sorted(files, key=lambda n: not is_unquantized(n, files[n]))
    unloadable: list[Check] = []
    for name in order:
        modelfile = modelfiles.get(name) or next(iter(modelfiles.values()), None)
        problem = gguf_problem(files[name])
        if problem is not None:
            unloadable.append(Check("gguf_loads", False, f"{name}: {problem}"))
            continue
        try:
            result = template_checks(hf_dir, files[name], modelfile, prompt_config, labels, sample_example)
        except Exception as exc:  # a diagnostic must never sink the evaluation it annotates
            error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            return _unchecked(name, files[name], modelfile, unloadable, error)
        result.checks[:0] = unloadable
        data = result.to_dict()
        data["name"] = name
        return data
    return _unchecked(order[0], files[order[0]], modelfiles.get(order[0]), unloadable, None)


def _unchecked(name: str, gguf: Path, modelfile: Path | None, checks: list[Check], error: str | None) -> dict[str, Any]:
    """The checks' full shape when no file could be checked (the report lists "error" as a row)."""
    result = TemplateChecks(gguf=str(gguf), modelfile=str(modelfile) if modelfile else None, renderings={},
                            diffs={}, token_ids={}, checks=list(checks))
    data = result.to_dict()
    # No file loaded: a failure. Only an unexpected error leaves the checks undecided.
    data["passed"] = None if error is not None and not checks else False
    data.update(name=name, error=error)
    return data
