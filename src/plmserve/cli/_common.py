"""Helpers shared by the CLI command modules: one-line errors (exit code 2), progress bars."""

from __future__ import annotations

import functools
import sys
from typing import Any, Callable, TypeVar

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from plmserve.errors import PlmserveError

console = Console(stderr=True)
F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str) -> "typer.Exit":
    """Print ``error: <message>`` on one line to stderr and return an Exit(2) to raise."""
    console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


def cli_errors(fn: F) -> F:
    """Decorator: turn expected errors into one line on stderr and exit code 2, no traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except (typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except PlmserveError as exc:
            raise fail(str(exc)) from None
        except (FileNotFoundError, IsADirectoryError, PermissionError) as exc:
            raise fail(f"{exc.strerror}: {exc.filename}") from None
        except (ValueError, OSError) as exc:
            raise fail(str(exc)) from None

    return wrapper  # type: ignore[return-value]


def progress(disable: bool | None = None) -> Progress:
    """A rich progress bar on stderr; hidden when stderr is not a terminal unless forced."""
    if disable is None:
        disable = not sys.stderr.isatty()
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=disable,
    )
