"""Thin PL/Python adapters: the only module that talks to ``plpy``.

Each public function here is called by the SQL function of the same name in
``sql/``; it reads data through SPI, calls the numeric core with numpy arrays,
and writes results back. Core errors become ``plpy.error`` with their SQLSTATE.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import segmentation
from segmentation.errors import SegmentationError

F = TypeVar("F", bound=Callable[..., Any])


def reports_errors(fn: F) -> F:
    """Turn a :class:`SegmentationError` into ``plpy.error`` with SQLSTATE and hint."""

    @functools.wraps(fn)
    def wrapper(plpy: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(plpy, *args, **kwargs)
        except SegmentationError as exc:
            plpy.error(exc.message, detail=exc.detail, hint=exc.hint, sqlstate=exc.sqlstate)

    return wrapper  # type: ignore[return-value]


def python_runtime(plpy: Any, GD: dict) -> str:
    """Versions of the server-side runtime as a jsonb text."""
    import json

    import numpy
    import scipy
    import sklearn

    return json.dumps({
        "python": "%d.%d.%d" % sys.version_info[:3],
        "numpy": numpy.__version__,
        "scipy": scipy.__version__,
        "scikit_learn": sklearn.__version__,
        "package": segmentation.__version__,
        "lib_dir": GD.get("segmentation.lib_dir"),
    })
