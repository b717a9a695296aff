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


def rows_table(title: str, columns: list[str], rows: list[dict]):
    """A rich Table with one right-aligned column per key and one line per row dict (missing keys blank)."""
    from rich.table import Table

    table = Table(title=title)
    for c in columns:
        table.add_column(c, justify="right")
    for r in rows:
        table.add_row(*[str(r.get(c, "")) for c in columns])
    return table
