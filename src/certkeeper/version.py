"""The version and the source revision ``certkeeper --version`` prints.

The image build writes the git commit into ``certkeeper/_build.py`` (``REVISION = "..."``); a source
checkout or a wheel built without it says "unknown".
"""

from __future__ import annotations

import importlib

from certkeeper import __version__


def revision() -> str:
    try:
        build = importlib.import_module("certkeeper._build")
    except ImportError:
        return "unknown"
    return str(getattr(build, "REVISION", "unknown"))


def version_line() -> str:
    return f"{__version__} (revision {revision()})"
