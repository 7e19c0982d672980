"""Progress of long loops (training steps, eval images, infer images) for a terminal and for a log file.

On a terminal a tqdm bar; otherwise (nohup, SLURM, CI: stderr is a file) a bar is invisible or a
smear of carriage returns, so a plain line goes to the ``kdsr`` logger instead: what runs, how far,
the latest values (each loss term), seconds per item and the time left. ``kdsr run``, ``eval`` and
``infer`` all report through :class:`Progress`, so their logs read the same.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

from tqdm import tqdm

log = logging.getLogger("kdsr")


def format_duration(seconds: float) -> str:
    """``7s``, ``3m05s``, ``2h04m``: short enough for a log line, exact enough for an ETA."""
    s = max(int(round(seconds)), 0)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def _fmt_value(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class Progress:
    """Counts items towards ``total``; a bar on a TTY, else a log line every ``every_n`` items or ``every_s`` seconds.

    The first item and the last always get a line (the first shows the speed early, the last the total).
    ``values`` given to :meth:`update` (e.g. the mean of each loss term over the logging window) are
    shown until replaced. ``tty=None`` asks ``sys.stderr`` (where the logger writes).
    """

    def __init__(
        self,
        total: int,
        label: str,
        unit: str = "step",
        every_n: int | None = None,
        every_s: float | None = 30.0,
        initial: int = 0,
        enabled: bool = True,
        tty: bool | None = None,
        leave: bool = True,
    ) -> None:
        self.total, self.label, self.unit = total, label, unit
        self.every_n, self.every_s = every_n, every_s
        self.done = self.start = initial
        self.enabled = enabled
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.values: dict[str, Any] = {}
        self.t0 = self._last_t = time.perf_counter()
        self._last_n = initial
        self.bar = tqdm(total=total, initial=initial, desc=label, unit=unit, leave=leave) if enabled and self.tty else None

    def update(self, n: int = 1, values: Mapping[str, Any] | None = None) -> None:
        self.done += n
        if values is not None:
            self.values = dict(values)
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(n)
            if values is not None:
                self.bar.set_postfix({k: _fmt_value(v) for k, v in self.values.items()}, refresh=False)
            return
        now = time.perf_counter()
        due = (
            self.done - self.start == n  # the first update
            or self.done >= self.total
            or (self.every_n is not None and self.done // self.every_n > self._last_n // self.every_n)
            or (self.every_s is not None and now - self._last_t >= self.every_s)
        )
        if due:
            log.info(self.line(now))
            self._last_t, self._last_n = now, self.done

    def line(self, now: float | None = None) -> str:
        """``train distil 200/600 steps (33%) loss=0.021 l1=0.012 output_kd=0.009 | 0.41 s/step, ETA 2m44s``."""
        now = time.perf_counter() if now is None else now
        counted = self.done - self.start
        rate = (now - self.t0) / counted if counted else 0.0
        text = f"{self.label} {self.done}/{self.total} {self.unit}s" if self.total else f"{self.label} {self.done} {self.unit}s"
        if self.total:
            text += f" ({100 * self.done / self.total:.0f}%)"
        if self.values:
            text += " " + " ".join(f"{k}={_fmt_value(v)}" for k, v in self.values.items())
        text += f" | {rate:.3g} s/{self.unit}"
        if self.total and self.done < self.total:
            text += f", ETA {format_duration(rate * (self.total - self.done))}"
        elif counted:
            text += f", took {format_duration(now - self.t0)}"
        return text

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
