"""Progress of long loops (per image, per pair, per iteration), reported through logging so that
the compute code stays free of any user interface.

Tasks call :func:`report` inside their loops. It emits a record at level :data:`PROGRESS` (15,
between DEBUG and INFO) carrying ``progress=(label, done, total)``, and only when something
listens (``logger.isEnabledFor``), so it costs a level check otherwise. The command line's
:func:`rich_progress` context is the listener: it lowers the ``capture3d`` loggers to
:data:`PROGRESS`, draws one Rich progress bar per label, and keeps these records out of the plain
log lines.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

logger = logging.getLogger(__name__)

PROGRESS = 15


def report(log: logging.Logger, label: str, done: int, total: int) -> None:
    """``done`` of ``total`` steps of the loop ``label`` are finished."""
    if log.isEnabledFor(PROGRESS):
        log.log(PROGRESS, "%s: %d/%d", label, done, total, extra={"progress": (label, int(done), int(total))})


class _ProgressHandler(logging.Handler):
    """Turns progress records into Rich progress bars, one task per label."""

    def __init__(self, bars: object) -> None:
        super().__init__(level=PROGRESS)
        self.bars = bars
        self.tasks: dict[str, object] = {}

    def emit(self, record: logging.LogRecord) -> None:
        data = getattr(record, "progress", None)
        if not data:
            return
        label, done, total = data
        if label not in self.tasks:
            self.tasks[label] = self.bars.add_task(label, total=total)
        self.bars.update(self.tasks[label], completed=done, total=total)


class _WithoutProgress(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not hasattr(record, "progress")


@contextmanager
def rich_progress(console: object | None = None) -> Iterator[object]:
    """Show the progress of the ``capture3d`` loops as Rich bars (on ``console``, default stderr)
    for the duration of the block; yields the :class:`rich.progress.Progress`."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    bars = Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console or Console(stderr=True),
        transient=False,
    )
    package = logging.getLogger("capture3d")
    saved_level = package.level
    quiet = _WithoutProgress()
    handler = _ProgressHandler(bars)
    root_handlers = list(logging.getLogger().handlers)
    for h in root_handlers:
        h.addFilter(quiet)
    if package.getEffectiveLevel() > PROGRESS:
        package.setLevel(PROGRESS)
    package.addHandler(handler)
    try:
        with bars:
            yield bars
    finally:
        package.removeHandler(handler)
        package.setLevel(saved_level)
        for h in root_handlers:
            h.removeFilter(quiet)
