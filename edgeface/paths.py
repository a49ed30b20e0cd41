"""Where edgeface reads data and keeps caches: one rule each, used by the build, the tests and the tools.

* **cache root**: ``$EDGEFACE_CACHE``, else ``$XDG_CACHE_HOME/edgeface``, else ``~/.cache/edgeface``.
  Downloads of upstream weights, calibration crops, the pruning cache and the tests' built models live
  under it; nothing is ever written into the installed package.
* **data root**: ``$EDGEFACE_DATA``, else ``../shared/data`` from the working directory (the layout of a
  checkout next to the shared data: run commands from the checkout). It holds ``lfw/`` and ``bbt/``.
"""
from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """The cache folder (not created here): ``$EDGEFACE_CACHE`` or the user's cache folder + ``edgeface``."""
    env = os.environ.get("EDGEFACE_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgeface"


def data_root() -> Path:
    """The data folder holding ``lfw/`` and ``bbt/``: ``$EDGEFACE_DATA`` or ``../shared/data``, as an absolute
    path (a relative one, as in the README's commands, would break for any tool that runs elsewhere, e.g. a
    browser asked to upload one of its photos)."""
    env = os.environ.get("EDGEFACE_DATA")
    return (Path(env).expanduser() if env else Path("..", "shared", "data")).resolve()
