"""Progress for long loops: one way to show it everywhere (``progress: bool = True`` in every analysis)."""

from __future__ import annotations

import sys
from typing import Iterable, TypeVar

T = TypeVar("T")


def bar(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "", enabled: bool = True,
        unit: str = "it"):
    """A tqdm progress bar on stderr (a silent pass-through when ``enabled`` is False)."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=not enabled, unit=unit, leave=False, dynamic_ncols=True)


def note(message: str, enabled: bool = True) -> None:
    """One line of status on stderr."""
    if enabled:
        print(message, file=sys.stderr, flush=True)
