"""Console output shared by the stages: progress bars and messages go to stderr, results to stdout."""

from __future__ import annotations

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

err = Console(stderr=True)
out = Console()


def track(iterable, description: str, total: int | None = None):
    """Iterate with a progress bar on stderr (plain and quiet when stderr is not a terminal)."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TimeRemainingColumn())
    with Progress(*columns, console=err, transient=False, disable=not err.is_terminal) as progress:
        yield from progress.track(iterable, total=total, description=description)
