"""The export's progress bar on stderr: one step per unit (rich), or nothing when progress is off."""

from __future__ import annotations


class ExportProgress:
    """A rich progress bar on stderr (or nothing): one step per unit."""

    def __init__(self, enabled: bool, total: int):
        self.bar = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.bar = Progress(TextColumn("export {task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                                TimeElapsedColumn(), console=Console(stderr=True), transient=False)
            self.task = self.bar.add_task("", total=total)
            self.bar.start()
        self.started = False
        self.live = self.bar is not None

    def step(self, name: str) -> None:
        if self.bar is not None:
            if self.started:
                self.bar.advance(self.task)
            self.started = True
            self.bar.update(self.task, description=name)

    def add(self, n: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=self.bar.tasks[0].total + n)

    def finish(self) -> None:
        if self.live:
            if self.started:
                self.bar.advance(self.task)
            self.bar.update(self.task, description="done")
        self.stop()

    def stop(self) -> None:
        if self.live:
            self.bar.stop()
            self.live = False
