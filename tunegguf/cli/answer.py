"""`tunegguf answer`: prompts (arguments, stdin lines, or a .txt/.jsonl file) in, a GGUF's answers out."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import click

from tunegguf.cli.common import Command


@click.command("answer", cls=Command)
@click.argument("prompts", nargs=-1)
@click.option("--gguf", "gguf_path", default=None, help="The .gguf file to answer with (without --run-dir).")
@click.option("--run-dir", "--run", "run_dir", type=click.Path(file_okay=False),
              help="A tunegguf run directory: its prompt settings, and by default the GGUF its report recommends "
                   "(else Q4_K_M, else the smallest exported file).")
@click.option("--model", default=None, help="With --run-dir: a quant name of the run (Q8_0, f16, ...) or a .gguf path.")
@click.option("--config", "config_path", type=click.Path(dir_okay=False),
              help="With --gguf: the run config whose prompt settings to use (default: the GGUF's own chat template).")
@click.option("--input", "input_path", type=click.Path(dir_okay=False),
              help="A .txt file (a prompt a line) or .jsonl file (\"prompt\", \"instruction\"/\"input\" or \"messages\" a line).")
@click.option("--system", default=None, help="System message for every prompt (chat formats).")
@click.option("--max-new-tokens", default=256, show_default=True, help="Most tokens an answer may have.")
@click.option("--temperature", default=0.0, show_default=True, help="0: greedy (the only decoding the backends offer).")
@click.option("--n-ctx", default=None, type=int, help="llama.cpp context in tokens (default: the run's evaluate.n_ctx, else 2048).")
@click.option("--out", "out_path", default=None, help="Write one JSON object per answer to this .jsonl file instead of printing.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object per answer.")
def answer_command(prompts, gguf_path, run_dir, model, config_path, input_path, system, max_new_tokens, temperature,
                   n_ctx, out_path, as_json):
    """Answer PROMPTS (or stdin lines, or --input FILE) with an exported GGUF, greedy, stopping at
    end-of-turn, with the prompt rendered exactly as in training and the parity report.

    \b
    tunegguf answer --gguf runs/demo/export/gguf/model-Q4_K_M.gguf "Reverse the word cat"
    tunegguf answer --run-dir runs/demo --model Q8_0 "What is 7 + 5?" "Sort: 3, 1, 2"
    tunegguf answer --run-dir runs/demo --input prompts.jsonl --out answers.jsonl
    """
    from tunegguf.config.run import load_run_config
    from tunegguf.errors import TuneGGUFError
    from tunegguf.pipeline.answer import (Answerer, answer, answerer_from_run, budget_warning, read_requests,
                                          requests_from_texts, require_gguf)

    out = Path(out_path) if out_path else None
    if out is not None and (out.is_dir() or out.suffix.lower() != ".jsonl"):
        what = "is a directory" if out.is_dir() else f"has type '{out.suffix or '(none)'}'"
        raise TuneGGUFError(f"--out {out} {what}; give a .jsonl file")
    if input_path and prompts:
        raise TuneGGUFError("give PROMPT arguments or --input FILE, not both")
    # The prompts before the model: a bad input is one line before anything loads.
    if input_path:
        requests = read_requests(input_path)
    elif prompts and prompts != ("-",):
        requests = requests_from_texts(prompts)
    elif not sys.stdin.isatty() or prompts == ("-",):
        requests = requests_from_texts([line.rstrip("\n") for line in sys.stdin if line.strip()], where="stdin line")
    else:
        requests = []
    if not requests:
        raise TuneGGUFError("nothing to answer: give PROMPT arguments, pipe lines on stdin, or use --input FILE")

    if run_dir and gguf_path:
        raise TuneGGUFError("give --gguf FILE or --run-dir RUN_DIR (with --model to pick its file), not both")
    if run_dir:
        answerer = answerer_from_run(Path(run_dir), model)
    elif gguf_path:
        config = load_run_config(config_path)
        answerer = Answerer(gguf=require_gguf(gguf_path), prompt=config.prompt, n_ctx=config.evaluate.n_ctx,
                            n_threads=config.evaluate.n_threads, config_path=Path(config_path) if config_path else None,
                            extra_buffers=config.evaluate.llama_extra_buffers)
    else:
        raise TuneGGUFError("give --gguf FILE, or --run-dir RUN_DIR of a finished run")
    if n_ctx is not None:
        answerer.n_ctx = n_ctx

    answers = answer(answerer, requests, system=system, max_new_tokens=max_new_tokens, temperature=temperature)
    for a in answers:
        warning = budget_warning(a, max_new_tokens)
        if warning:
            click.echo(f"warning: {warning}", err=True)
    if out is not None:
        from tunegguf.io import atomic_path

        out.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(out) as tmp:
            Path(tmp).write_text("".join(json.dumps(a.to_dict(), ensure_ascii=False) + "\n" for a in answers),
                                 encoding="utf-8")
        click.echo(f"wrote {len(answers)} answers to {out} (model: {answerer.gguf})", err=True)
        return
    for index, a in enumerate(answers):
        if as_json:
            click.echo(json.dumps(a.to_dict(), ensure_ascii=False))
        elif len(answers) == 1:
            click.echo(a.text)
        else:
            # Answers may hold blank lines: a header per answer keeps them apart.
            click.echo(("\n" if index else "") + f"==> {a.id} <==\n{a.text}")
