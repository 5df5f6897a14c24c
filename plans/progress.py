"""Progress of a run from its documents: a bar on a terminal, a line per 10 % in logs."""

from __future__ import annotations

import sys
from typing import Any, TextIO

__all__ = ["ProgressPrinter"]


class ProgressPrinter:
    """bluesky document callback printing ``label [####....] done/total`` per primary event.

    ``total`` comes from the start document's ``num_points``; the label from ``plan_name``.
    Subscribe it with ``RE.subscribe(ProgressPrinter())``. It only formats text: it never
    blocks the RunEngine.

    Parameters
    ----------
    stream : file, optional
        Where to write (default ``sys.stdout``).
    width : int
        Bar width in characters.
    """

    def __init__(self, stream: TextIO | None = None, width: int = 30) -> None:
        if width < 1:
            raise ValueError(f"width must be >= 1, got {width}")
        self.stream = stream
        self.width = width
        self._label = ""
        self._total = 0
        self._done = 0
        self._primary: set[str] = set()

    def __call__(self, name: str, doc: dict[str, Any]) -> None:
        """Handle one document."""
        if name == "start":
            self._label = str(doc.get("plan_name", "run"))
            self._total = int(doc.get("num_points") or 0)
            self._done = 0
            self._primary.clear()
        elif name == "descriptor" and doc.get("name") == "primary":
            self._primary.add(doc["uid"])
        elif name == "event" and doc.get("descriptor") in self._primary:
            self._done += 1
            self._show()

    def _show(self) -> None:
        out = self.stream or sys.stdout
        total = max(self._total, self._done, 1)
        filled = int(self.width * self._done / total)
        text = (f"  {self._label:<22} [{'#' * filled}{'.' * (self.width - filled)}] "
                f"{self._done}/{self._total or '?'}")
        if out.isatty():
            print("\r" + text, end="\n" if self._done >= total else "", file=out, flush=True)
        elif self._done == total or self._done % max(1, total // 10) == 0:
            print(text, file=out, flush=True)
