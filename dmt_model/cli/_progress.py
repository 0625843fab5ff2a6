"""Progress bars on a terminal; one plain line per stage in a log or a pipe."""

from __future__ import annotations

import sys
from collections.abc import Iterable
from typing import Any


def progress(iterable: Iterable[Any] | None = None, *, desc: str, unit: str,
             total: int | None = None) -> Any:
    """A tqdm bar on stderr when it is a terminal; otherwise print ``desc`` once."""
    from tqdm import tqdm

    interactive = sys.stderr.isatty()
    if not interactive:
        print(f"{desc} …", flush=True)
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not interactive)
