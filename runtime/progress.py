"""A progress bar for long replays (rebuilds): position of head, events/s and ETA, on stderr."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeRemainingColumn,
)
from rich.text import Text


class EventRate(ProgressColumn):
    """Events per second (rich's own speed column counts bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text(
            f"{speed:,.0f} events/s" if speed else "- events/s", style="progress.data.speed"
        )


@contextmanager
def replay_progress(
    console: Console | None = None,
) -> Iterator[Callable[[str], Callable[[int, int], None]]]:
    """Yields ``track(name)``, which returns the ``progress(position, head)`` callback a
    runner's ``rebuild`` takes; one bar per read model."""
    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        EventRate(),
        TextColumn("ETA"),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
    ) as progress:

        def track(name: str) -> Callable[[int, int], None]:
            task = progress.add_task(f"rebuild {name}", total=None)

            def update(position: int, head: int) -> None:
                progress.update(task, completed=position, total=max(head, position))

            return update

        yield track
