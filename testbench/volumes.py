"""A mounted Secret as the kubelet updates it, for the proxy's tests and benchmark."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path


def write_secret_volume(secrets: Path, files: dict[str, bytes]) -> None:
    """A new ``..<timestamp>`` directory, an atomic ``..data`` symlink swap, stable per-key links."""
    version = secrets / f"..{time.time_ns()}"
    version.mkdir(mode=0o755)
    for name, data in files.items():
        (version / name).write_bytes(data)
    data_link = secrets / "..data"
    old = os.readlink(data_link) if data_link.is_symlink() else None
    tmp = secrets / "..data_tmp"
    tmp.symlink_to(version.name)
    os.replace(tmp, data_link)
    for name in files:
        link = secrets / name
        if not link.is_symlink():
            link.symlink_to(f"..data/{name}")
    if old is not None:
        shutil.rmtree(secrets / old)
