"""Progress bars that suit where the code runs.

In JupyterLab, ``tqdm.auto`` draws ipywidgets bars. In headless papermill runs (the runner sets
``MIBENCH_HEADLESS=1`` for the kernel it starts) widget bars would only fill the executed notebook
with comm messages, so plain text bars are used, updated at most every ``mininterval`` seconds.
"""

from __future__ import annotations

import os
from typing import Any

from tqdm import tqdm as _text_tqdm
from tqdm.auto import tqdm as _auto_tqdm

HEADLESS_ENV = "MIBENCH_HEADLESS"


def headless() -> bool:
    """True inside a headless study run started by :mod:`mibench_lib.studies.runner`."""
    return os.environ.get(HEADLESS_ENV, "") not in ("", "0")


def tqdm(*args: Any, **kwargs: Any) -> _text_tqdm:
    """``tqdm.auto.tqdm`` interactively, text ``tqdm`` (10 s refresh) in headless runs."""
    if headless():
        kwargs.setdefault("mininterval", 10.0)
        return _text_tqdm(*args, **kwargs)
    return _auto_tqdm(*args, **kwargs)
