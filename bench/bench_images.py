"""Container image benchmark (issue 12): sizes, and ``make images`` cold and cached.

The cold build runs with ``XDG_CACHE_HOME`` pointing at a temporary directory, so the machine's own
image cache is neither used nor disturbed: both ``mmdebstrap`` runs download every package (the
wheels come from the host's pip cache). Then the same build again, three times: the cached case.
Results go to bench/out/images.json; a table is printed.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
GOAL_BYTES = 120_000_000


def _build(env: dict[str, str]) -> float:
    started = time.monotonic()
    subprocess.run([str(ROOT / "scripts" / "images"), "build"], env=env, check=True, stdout=subprocess.DEVNULL)
    return time.monotonic() - started


def _sizes(env: dict[str, str]) -> dict[str, Any]:
    code = (
        "import json; from testbench import images\n"
        "print(json.dumps({s.name: {'bytes': images.image_size(images.tag(s)),"
        " 'archive_bytes': images.archive(s).stat().st_size} for s in images.IMAGES}))"
    )
    out = subprocess.run(
        [str(ROOT / ".venv" / "bin" / "python"), "-c", code], env=env, check=True, capture_output=True, text=True
    ).stdout
    sizes: dict[str, Any] = json.loads(out)
    return sizes


def main() -> None:
    cache = Path(tempfile.mkdtemp(prefix="certkeeper-bench-images-"))
    env = {**os.environ, "XDG_CACHE_HOME": str(cache), "PYTHONPATH": str(ROOT)}
    load_before = os.getloadavg()[0]
    try:
        cold = _build(env)
        cached = [_build(env) for _ in range(3)]
        sizes = _sizes(env)
    finally:
        storage = cache / "certkeeper" / "images"
        subprocess.run(
            ["buildah", "--root", str(storage / "storage"), "--runroot", str(storage / "run"), "rmi", "--all", "-f"],
            capture_output=True,
            check=False,
        )
        shutil.rmtree(cache, ignore_errors=True)
    result = {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()}, {psutil.cpu_count()} cores, {psutil.virtual_memory().total / 2**30:.0f} GiB",
        "load_average_before": load_before,
        "load_average_after": os.getloadavg()[0],
        "cold_build_s": round(cold, 1),
        "cached_build_s": [round(c, 2) for c in cached],
        "images": sizes,
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "images.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"make images, cold (empty cache, both images): {cold:.0f} s")
    print(f"make images, cached: {', '.join(f'{c:.2f} s' for c in cached)}")
    for name, size in sizes.items():
        verdict = "met" if size["bytes"] <= GOAL_BYTES else "MISSED"
        print(
            f"{name}: {size['bytes'] / 1e6:.1f} MB uncompressed (goal <= 120 MB: {verdict}),"
            f" archive {size['archive_bytes'] / 1e6:.1f} MB"
        )


if __name__ == "__main__":
    main()
