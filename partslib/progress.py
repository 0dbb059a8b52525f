"""Progress of long loops, on a terminal that the notebook kernel's output does not reach.

The study's notebooks run in a papermill kernel: a tqdm bar inside them is drawn into the
executed notebook, not on the terminal of ``python -m partslib.runner``. So the library's long
loops (training epochs and batches, feature extraction, re-renders, T2's operators, the
benchmark) report through :class:`Progress`, which draws a tqdm bar when asked (``disable``
false, as tqdm) and, whenever the environment variable ``PARTSLIB_PROGRESS`` names a file,
appends small JSON events to it (one line each, at most every ``min_interval`` seconds per
loop, and always the last one)::

    {"task": "pdm", "n": 120, "total": 600, "unit": "batch", "t": 1733050000.1,
     "info": {"epoch": "2/10", "loss": "0.4120"}, "done": false}

The runner sets the variable for each notebook and shows the events with one bar per stage
(:class:`StageMonitor`), with the notebook's cell, the running loop, its epoch and an estimate
of the time it has left; in CI (``CI`` set) or when stderr is not a terminal it shows nothing.
After each notebook it logs the warnings the notebook showed (:func:`notebook_warnings`): they
too are drawn into the executed notebook only.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO, Any, TypeVar

__all__ = [
    "ENV",
    "Progress",
    "StageMonitor",
    "cell_progress_engine",
    "emit",
    "notebook_warnings",
    "show_progress",
]

ENV = "PARTSLIB_PROGRESS"
T = TypeVar("T")


def emit(event: dict[str, Any]) -> None:
    """Append one event to the file named by ``$PARTSLIB_PROGRESS`` (nothing when unset).

    A failure to write never stops the computation: progress is a courtesy."""
    path = os.environ.get(ENV)
    if not path:
        return
    try:
        with open(path, "a", encoding="utf-8") as f:
            f.write(json.dumps(event, default=str) + "\n")
    except OSError:
        pass


class Progress:
    """A tqdm-like progress counter of one loop that also reports to the runner.

    ``Progress(iterable, desc=..., disable=not progress)`` iterates like tqdm; or use
    ``update``, ``set_postfix`` and ``close`` (or ``with``) around a loop of ``total`` steps.
    The bar is drawn only when ``disable`` is false; the events (:func:`emit`) are written
    whenever ``$PARTSLIB_PROGRESS`` is set, whatever ``disable`` says.
    """

    def __init__(self, iterable: Iterable[T] | None = None, *, total: int | None = None,
                 desc: str = "", unit: str = "it", disable: bool = True, leave: bool = True,
                 initial: int = 0, min_interval: float = 0.5) -> None:
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        self.iterable, self.total, self.desc, self.unit = iterable, total, desc, unit
        self.n, self.info, self.min_interval = initial, {}, min_interval
        self._last, self._closed = 0.0, False
        self._bar = None
        if not disable:
            from tqdm.auto import tqdm
            self._bar = tqdm(total=total, desc=desc, unit=unit, leave=leave, initial=initial)
        self._emit(force=True)

    def _emit(self, force: bool = False, done: bool = False) -> None:
        now = time.time()
        if not force and now - self._last < self.min_interval:
            return
        self._last = now
        emit({"task": self.desc, "n": self.n, "total": self.total, "unit": self.unit,
              "t": now, "info": self.info, "done": done})

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this Progress has no iterable: call update() instead")
        try:
            for item in self.iterable:
                yield item
                self.update()
        finally:
            self.close()

    def update(self, n: int = 1) -> None:
        """Count ``n`` more steps done."""
        self.n += n
        if self._bar is not None:
            self._bar.update(n)
        self._emit(force=self.total is not None and self.n >= self.total)

    def set_postfix(self, **info: Any) -> None:
        """What to show beside the count (e.g. ``loss="0.41"``), on the bar and the events."""
        self.info.update({k: str(v) for k, v in info.items()})
        if self._bar is not None:
            self._bar.set_postfix(**info)

    def set_postfix_str(self, text: str, refresh: bool = True) -> None:
        """One free text beside the count (tqdm's ``set_postfix_str``)."""
        self.info["now"] = text
        if self._bar is not None:
            self._bar.set_postfix_str(text, refresh=refresh)

    def close(self) -> None:
        """Finish the loop: the last event says ``done``; the bar is closed."""
        if self._closed:
            return
        self._closed = True
        self._emit(force=True, done=True)
        if self._bar is not None:
            self._bar.close()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def show_progress(stream: IO[str] | None = None) -> bool:
    """Whether the runner draws progress bars: not in CI (``CI`` set and not ``0``/``false``),
    and only on a terminal."""
    if os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no"):
        return False
    stream = stream or sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def _duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


class _TaskState:
    """What the monitor knows of one loop: its first and latest event (for the rate)."""

    def __init__(self, event: dict[str, Any]) -> None:
        self.first = self.last = event

    def left(self) -> float | None:
        """Seconds left at the rate seen since the first event (None: no rate yet)."""
        total, n = self.last.get("total"), self.last["n"]
        dn, dt = n - self.first["n"], self.last["t"] - self.first["t"]
        if not total or dn <= 0 or dt <= 0:
            return None
        return (total - n) * dt / dn


class StageMonitor:
    """One terminal bar for one notebook: sets ``$PARTSLIB_PROGRESS`` to a fresh file while
    it is entered, tails the events there every ``interval`` seconds and shows the newest
    running loop (count, its ``info``, an estimate of its time left) or, between loops, the
    notebook's cells; the stage's elapsed time is shown throughout and, with ``expected``
    (the stage's seconds in the last run), the time left by it. ``show=False`` keeps only
    the file (nothing is drawn)."""

    def __init__(self, label: str, show: bool = True, stream: IO[str] | None = None,
                 interval: float = 0.5, expected: float | None = None) -> None:
        self.label, self.show, self.interval = label, show, interval
        self.expected, self._t0 = expected, time.time()
        self.stream = stream or sys.stderr
        self.events: list[dict[str, Any]] = []
        self._tasks: dict[str, _TaskState] = {}
        self._current: str | None = None
        self._cells: tuple[int, int] | None = None
        self._offset, self._buffer = 0, ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None
        self._saved: str | None = None
        fd, name = tempfile.mkstemp(prefix="partslib-progress-", suffix=".jsonl")
        os.close(fd)
        self.path = Path(name)

    def __enter__(self) -> StageMonitor:
        self._t0 = time.time()
        self._saved = os.environ.get(ENV)
        os.environ[ENV] = str(self.path)
        if self.show:
            from tqdm import tqdm

            class Bar(tqdm):
                """tqdm with a free ``text`` field for ``bar_format``."""
                text = ""

                @property
                def format_dict(self) -> dict[str, Any]:
                    return {**super().format_dict, "text": self.text}

            self._bar = Bar(total=None, desc=self.label, file=self.stream, leave=False,
                            dynamic_ncols=True, bar_format="{desc} |{bar:20}| {text} [{elapsed}]")
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.poll()
        if self._bar is not None:
            self._bar.close()
        if self._saved is None:
            os.environ.pop(ENV, None)
        else:
            os.environ[ENV] = self._saved
        self.path.unlink(missing_ok=True)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.poll()

    def poll(self) -> None:
        """Read the events written since the last poll and redraw the bar."""
        try:
            with open(self.path, encoding="utf-8") as f:
                f.seek(self._offset)
                chunk = f.read()
                self._offset = f.tell()
        except OSError:
            return
        lines = (self._buffer + chunk).split("\n")
        self._buffer = lines.pop()  # a line still being written
        for line in lines:
            try:
                event = json.loads(line)
            except ValueError:
                continue
            self._take(event)
        self._draw()

    def _take(self, event: dict[str, Any]) -> None:
        self.events.append(event)
        task = str(event.get("task", ""))
        if task == "cells":
            self._cells = (int(event["n"]), int(event["total"]))
            return
        if task not in self._tasks or self._tasks[task].last.get("done"):
            self._tasks[task] = _TaskState(event)
        self._tasks[task].last = event
        if not event.get("done"):
            self._current = task
        elif self._current == task:  # back to a loop still running (an outer one), if any
            running = [k for k, s in self._tasks.items() if not s.last.get("done")]
            self._current = running[-1] if running else None

    def _stage_left(self) -> str:
        """The stage's time left by the last run's seconds (``expected``), if known."""
        if not self.expected:
            return ""
        left = self.expected - (time.time() - self._t0)
        return (f"stage ~{_duration(left)} left" if left > 0 else
                f"stage over its last {_duration(self.expected)}")

    def status(self) -> tuple[int, int | None, str]:
        """``(n, total, text)`` the bar shows now."""
        n, total, text = self._status()
        stage = self._stage_left()
        return n, total, f"{text} · {stage}" if stage else text

    def _status(self) -> tuple[int, int | None, str]:
        cells = f"cell {self._cells[0]}/{self._cells[1]}" if self._cells else ""
        if self._current is None:
            n, total = self._cells if self._cells else (0, None)
            return n, total, cells or "starting"
        state = self._tasks[self._current]
        ev = state.last
        parts = [p for p in (cells, self._current) if p]
        total = ev.get("total")
        parts.append(f"{ev['n']}/{total} {ev.get('unit', '')}" if total else
                     f"{ev['n']} {ev.get('unit', '')}")
        parts += [f"{k} {v}" if k != "now" else str(v) for k, v in ev.get("info", {}).items()]
        left = state.left()
        if left is not None:
            parts.append(f"~{_duration(left)} left")
        return int(ev["n"]), total, " · ".join(parts)

    def _draw(self) -> None:
        if self._bar is None:
            return
        n, total, text = self.status()
        self._bar.total = total
        self._bar.n = n
        self._bar.text = text
        self._bar.refresh()


# -- the runner's side: cells of the notebook, its warnings -------------------------------------

_WARNING_LINE = re.compile(r"^(?:.*?:\d+: )?(?P<category>[A-Za-z_]\w*Warning): (?P<message>.+)$")


def notebook_warnings(nb_path: Path) -> list[tuple[int, str]]:
    """The warnings an executed notebook shows in its cells' stderr outputs, as
    ``(cell execution count, "Category: message")``, each once, in order."""
    import nbformat

    try:
        nb = nbformat.read(nb_path, as_version=4)
    except (OSError, ValueError):
        return []
    found: list[tuple[int, str]] = []
    for cell in nb.cells:
        for out in cell.get("outputs", []) if cell.cell_type == "code" else []:
            if out.get("output_type") != "stream" or out.get("name") != "stderr":
                continue
            for line in str(out.get("text", "")).splitlines():
                m = _WARNING_LINE.match(line.strip())
                item = (cell.get("execution_count") or 0,
                        f"{m['category']}: {m['message']}" if m else "")
                if m and item[1] not in {text for _, text in found}:
                    found.append(item)
    return found


def cell_progress_engine() -> str:
    """Register (once) and name a papermill engine that reports the cell the notebook runs
    as a ``cells`` event (:func:`emit`): ``n`` is the running cell, ``total`` the cells."""
    from papermill.engines import NBClientEngine, papermill_engines

    class CellProgressEngine(NBClientEngine):
        @classmethod
        def execute_managed_notebook(cls, nb_man: Any, kernel_name: str, **kwargs: Any) -> Any:
            start, total = nb_man.cell_start, len(nb_man.nb.cells)

            def cell_start(cell: Any, cell_index: int | None = None, **kw: Any) -> None:
                emit({"task": "cells", "n": (cell_index or 0) + 1, "total": total,
                      "t": time.time()})
                start(cell, cell_index=cell_index, **kw)

            nb_man.cell_start = cell_start
            return super().execute_managed_notebook(nb_man, kernel_name, **kwargs)

    papermill_engines.register("partslib-progress", CellProgressEngine)
    return "partslib-progress"
