"""The one progress bar of edgeface: tqdm on stderr when someone is watching, else the iterable itself."""
from __future__ import annotations

import sys
from typing import Iterable, Optional


def progress(iterable: Iterable, desc: str, total: Optional[int] = None, enabled: Optional[bool] = None) -> Iterable:
    """``iterable`` wrapped in a tqdm bar on stderr.

    ``enabled``: ``None`` (default) shows the bar when stderr is a terminal; ``True`` always (when tqdm is
    installed: it is optional for the core); ``False`` never. The bar disappears when the loop ends.
    """
    if enabled is None:
        enabled = sys.stderr.isatty()
    if not enabled:
        return iterable
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return iterable
    return tqdm(iterable, desc=desc, total=total, leave=False, file=sys.stderr, mininterval=1.0)
