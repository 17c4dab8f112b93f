"""Progress of a long computation: the ``lowrank_pool`` logger, and a tqdm bar where one is wanted.

Every fit and every score-matching loop reports here: one INFO record when it starts and one when it
ends (steps, seconds, the final error), a DEBUG record per step. ``logging.basicConfig(level="INFO")``
(or a handler on the ``"lowrank_pool"`` logger) shows them; nothing is printed otherwise. A tqdm bar is
drawn when ``bar=True``, or by default when tqdm is installed and stderr is a terminal.
"""

from __future__ import annotations

import logging
import sys
import time
from types import TracebackType
from typing import Any

__all__ = ["Progress", "logger"]

logger = logging.getLogger("lowrank_pool")


def _format(fields: dict[str, Any]) -> str:
    return ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())


class Progress:
    """Reports the steps of one computation ``what`` (at most ``total`` steps of ``unit``).

    Use as a context manager; :meth:`step` after each step with the figures worth seeing (e.g. the
    relative error), :meth:`done` with the final ones (otherwise the last step's are reported). The
    ``lowrank_pool`` logger gets one INFO record at the start and one at the end (steps, seconds, the
    figures), a DEBUG record per step; a tqdm bar is drawn where one is wanted.

    Parameters
    ----------
    what : str
        The computation's name, at the head of every record (e.g. ``"cp_approx(W (100, 512, 512), rank 64)"``).
    total : int or None
        The most steps it takes (the bar's length), None where unknown.
    unit : str, default "step"
        What one step is called (``"sweep"``, ``"epoch"``).
    bar : bool or None, default None
        Draw a tqdm bar: True (a warning where tqdm is missing), False, or None: where tqdm is installed
        and stderr is a terminal.

    Examples
    --------
    >>> import logging, sys
    >>> from lowrank_pool.validation import Progress
    >>> log, handler = logging.getLogger("lowrank_pool"), logging.StreamHandler(sys.stdout)
    >>> log.addHandler(handler)
    >>> log.setLevel("INFO")
    >>> with Progress("fit", 3, unit="sweep", bar=False) as progress:  # doctest: +ELLIPSIS
    ...     for sweep in range(3):
    ...         progress.step(error=0.5 / (sweep + 1))
    fit: started (at most 3 sweeps)
    fit: done, 3 sweeps in ... s; error 0.1667
    >>> log.removeHandler(handler)
    >>> log.setLevel("NOTSET")
    >>> progress.steps
    3
    """

    def __init__(self, what: str, total: int | None, *, unit: str = "step", bar: bool | None = None) -> None:
        self.what, self.total, self.unit = what, total, unit
        self.steps = 0
        self.fields: dict[str, Any] = {}
        self._final: dict[str, Any] | None = None
        self._start = time.perf_counter()
        self._bar = _tqdm(what, total, unit, bar)

    def __enter__(self) -> Progress:
        self._start = time.perf_counter()
        logger.info("%s: started (at most %s %ss)", self.what, self.total, self.unit)
        return self

    def step(self, **fields: Any) -> None:
        self.steps += 1
        self.fields = fields
        if logger.isEnabledFor(logging.DEBUG):
            logger.debug("%s: %s %d%s%s", self.what, self.unit, self.steps, ": " if fields else "", _format(fields))
        if self._bar is not None:
            self._bar.update(1)
            if fields:
                self._bar.set_postfix({k: f"{v:.4g}" if isinstance(v, float) else v for k, v in fields.items()})

    def done(self, **fields: Any) -> None:
        """The final figures (reported when the computation ends)."""
        self._final = fields

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._bar is not None:
            self._bar.close()
        seconds = time.perf_counter() - self._start
        if kind is not None:
            logger.info(
                "%s: stopped by %s after %d %ss, %.3g s", self.what, kind.__name__, self.steps, self.unit, seconds
            )
            return
        fields = self._final if self._final is not None else self.fields
        logger.info(
            "%s: done, %d %ss in %.3g s%s%s",
            self.what,
            self.steps,
            self.unit,
            seconds,
            "; " if fields else "",
            _format(fields),
        )


def _tqdm(what: str, total: int | None, unit: str, bar: bool | None) -> Any:
    if bar is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if bar:
            logger.warning("%s: progress=True but tqdm is not installed (pip install tqdm); logging only", what)
        return None
    if bar is None and not (hasattr(sys.stderr, "isatty") and sys.stderr.isatty()):
        return None
    return tqdm(total=total, desc=what, unit=unit, leave=False)
