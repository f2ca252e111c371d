"""What every `tunegguf` command shares: the one-line user error and comma-separated values.

A command built with `cls=Command` (or a group with `cls=Group`) turns a TuneGGUFError into
`error: ...` on one line with exit status 2, whether it runs under `tunegguf` or on its own
(click's CliRunner, a notebook).
"""

from __future__ import annotations

from typing import Any

import click

from tunegguf.errors import TuneGGUFError


class UserError(click.ClickException):
    """A mistake the user can fix: printed as one `error: ...` line, exit status 2."""

    exit_code = 2

    def show(self, file: Any = None) -> None:
        click.echo(f"error: {self.format_message()}", err=True)


class _OneLineErrors:
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except TuneGGUFError as exc:
            raise UserError(str(exc)) from None


class Command(_OneLineErrors, click.Command):
    """A click command whose TuneGGUFError is one line, exit 2."""


class Group(_OneLineErrors, click.Group):
    """A click group whose subcommands' TuneGGUFError is one line, exit 2."""

    command_class = Command


def comma_list(text: str) -> list[str]:
    """'Q8_0, Q4_K_M,' -> ['Q8_0', 'Q4_K_M']: a comma-separated CLI value, blanks dropped."""
    return [part.strip() for part in text.split(",") if part.strip()]


def echo_table(columns: list[str], rows: list[list[str]]) -> None:
    """A plain aligned text table (markdown bold markers dropped)."""
    widths = [max(len(str(x)) for x in [c] + [r[i] for r in rows]) for i, c in enumerate(columns)]
    click.echo("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for row in rows:
        click.echo("  ".join(str(x).replace("**", "").ljust(w) for x, w in zip(row, widths)))
