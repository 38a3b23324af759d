"""What every `crm-scoring` command module shares: the settings, the consoles and one-line failures."""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.console import Console
from rich.markup import escape

if TYPE_CHECKING:
    from serving.settings import CrmScoringSettings

#: Rich cuts output to 80 columns when it is not a terminal (a pipe, a log file, `make run`
#: under a CI runner): tables lose their names and commands break across lines. Piped
#: output is as wide as its content instead.
_PIPED_WIDTH = 1000

#: Progress and errors (stderr) apart from results (stdout), so output can be piped.
console = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH)
out = Console(width=None if sys.stdout.isatty() else _PIPED_WIDTH)


def fail(message: str, code: int = 1, *, one_line_per_problem: bool = False) -> None:
    """Exit non-zero with the reason as one line, no traceback; with `one_line_per_problem`,
    each line of the message on its own (a rules file's `file:line:column: problem` lines)."""
    text = str(message)
    lines = [" ".join(line.split()) for line in text.splitlines() if line.strip()] if one_line_per_problem else [" ".join(text.split())]
    lines = lines or [""]
    console.print(f"[bold red]error:[/] {escape(lines[0])}", highlight=False, soft_wrap=True)
    for line in lines[1:]:
        console.print(f"  {line}", highlight=False, soft_wrap=True, markup=False)
    raise typer.Exit(code)


def load_settings(*, store: Path | None = None, tags: Path | None = None) -> CrmScoringSettings:
    """The command's one settings object: the environment, then the command's `--store` / `--tags`."""
    from serving.settings import read_settings

    settings = read_settings()
    updates = {name: value for name, value in (("store_dir", store), ("tags_file", tags)) if value is not None}
    return settings.model_copy(update=updates) if updates else settings


@contextmanager
def errors_as_exit() -> Iterator[None]:
    """Expected failures (bad input, missing files, the project's own errors) as one line."""
    from features.errors import CrmScoringError

    try:
        yield
    except (CrmScoringError, ValueError, OSError, sqlite3.Error) as exc:
        from serving.tags import TagRulesError

        fail(str(exc), one_line_per_problem=isinstance(exc, TagRulesError))
