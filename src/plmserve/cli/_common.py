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


class PlainProgress(Progress):
    """Progress for a log file: no live bar, one plain line per task every ``interval`` seconds and
    a last line when a task that ran at least ``interval`` seconds ends, e.g.::

        score: 1200/4996 (24%), 2.21/s, ETA 0:28:37
        score: 4996/4996 (100%) in 0:37:40, 2.21/s

    Rate and ETA are rich's own estimates (``Task.speed`` / ``Task.time_remaining``, over the last
    30 s). Used by :func:`progress` when stderr is not a terminal."""

    def __init__(self, *columns: Any, interval: float = 10.0, out: Console | None = None, **kwargs: Any):
        kwargs["disable"] = True  # rich tracks the tasks; this class prints them
        super().__init__(*columns, **kwargs)
        self.interval = interval
        self.out = out or console
        self._last_line: dict[Any, float] = {}

    def add_task(self, description: str, *args: Any, **kwargs: Any):
        task_id = super().add_task(description, *args, **kwargs)
        self._last_line[task_id] = self.get_time()
        return task_id

    def update(self, task_id: Any, *args: Any, **kwargs: Any) -> None:
        super().update(task_id, *args, **kwargs)
        self._maybe_print(task_id)

    def advance(self, task_id: Any, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._maybe_print(task_id)

    def stop(self) -> None:
        super().stop()
        for task in self.tasks:  # a last line for tasks long enough to have had periodic ones
            elapsed = task.finished_time if task.finished_time is not None else task.elapsed
            if task.completed and elapsed is not None and elapsed >= self.interval:
                self.out.print(self.line(task, final=True), highlight=False, soft_wrap=True)

    def _maybe_print(self, task_id: Any) -> None:
        now = self.get_time()
        if now - self._last_line.get(task_id, now) < self.interval:
            return
        self._last_line[task_id] = now
        with self._lock:
            task = self._tasks[task_id]
        self.out.print(self.line(task), highlight=False, soft_wrap=True)

    @staticmethod
    def line(task: Any, final: bool = False) -> str:
        """``description: done/total (pct), rate/s, ETA h:mm:ss`` (or ``in h:mm:ss`` when final)."""
        done = f"{task.completed:g}"
        if task.total:
            done += f"/{task.total:g} ({100 * task.completed / task.total:.0f}%)"
        parts = [f"{task.description}: {done}"]
        elapsed = task.finished_time if task.finished_time is not None else task.elapsed
        if final and elapsed is not None:
            parts[0] += f" in {_hms(elapsed)}"
        speed = task.speed
        if speed is None and elapsed:
            speed = task.completed / elapsed
        if speed:
            parts.append(f"{speed:.3g}/s")
        if not final and task.total and speed:
            parts.append(f"ETA {_hms((task.total - task.completed) / speed)}")
        return ", ".join(parts)


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


#: seconds between two plain progress lines when stderr is not a terminal
PROGRESS_INTERVAL_S = 10.0


def progress(disable: bool | None = None, *, interval: float | None = None) -> Progress:
    """Progress on stderr for a long operation.

    ``disable=None`` (default): a rich bar when stderr is a terminal, else :class:`PlainProgress`
    lines every ``interval`` seconds (a log file still shows done/total, rate and ETA).
    ``disable=True``: nothing (short operations). ``disable=False``: always the rich bar."""
    if disable is None and not sys.stderr.isatty():  # not rich's is_terminal: FORCE_COLOR must not hide logs
        return PlainProgress(interval=PROGRESS_INTERVAL_S if interval is None else interval)
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        disable=bool(disable),
    )
