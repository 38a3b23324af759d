"""What every `crm-scoring` command module shares: the consoles and one-line failures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import typer
from rich.console import Console

#: Progress and errors (stderr) apart from results (stdout), so output can be piped.
console = Console(stderr=True)
out = Console()


def fail(message: str, code: int = 1) -> None:
    """Exit non-zero with one line, no traceback: the reason is the message."""
    console.print(f"[bold red]error:[/] {' '.join(str(message).split())}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


@contextmanager
def errors_as_exit() -> Iterator[None]:
    """Expected failures (bad input, missing files, the project's own errors) as one line."""
    from features.errors import CrmScoringError

    try:
        yield
    except (CrmScoringError, ValueError, OSError) as exc:
        fail(str(exc))
