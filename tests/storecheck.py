"""What the store tests share: is a lineage consistent, how many orders, and killing a run mid-write."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from testbench.ari import AcmeFront
from testbench.command import Env

LINKS = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem", "meta.json")
ROOT = Path(__file__).resolve().parent.parent


def spki_of_key(pem: bytes) -> bytes:
    key = serialization.load_pem_private_key(pem, password=None)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_of_cert(pem: bytes) -> bytes:
    cert = x509.load_pem_x509_certificate(pem)
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def serial_of(path: Path) -> int:
    return x509.load_pem_x509_certificate(path.read_bytes()).serial_number


def consistency_problems(lineage: Path, names: list[str]) -> list[str]:
    """Everything a consumer or the next run would trip over; [] when the lineage is as a clean run leaves it."""
    problems = []
    target = os.readlink(lineage / "current") if (lineage / "current").is_symlink() else None
    if target is None or not re.fullmatch(r"versions/[0-9]+", target):
        return [f"current is {target!r}"]
    for name in LINKS:
        link = lineage / name
        if not link.is_symlink() or os.readlink(link) != f"current/{name}":
            problems.append(f"{name} is not a link to current/{name}")
    version = lineage / target
    key, cert, chain, full = (
        (version / n).read_bytes() for n in ("privkey.pem", "cert.pem", "chain.pem", "fullchain.pem")
    )
    if spki_of_key(key) != spki_of_cert(cert):
        problems.append("key and certificate differ")
    if full != cert + chain:
        problems.append("fullchain is not cert + chain")
    if json.loads((version / "meta.json").read_text())["names"] != names:
        problems.append("meta.json names differ")
    leftovers = [p.name for p in lineage.iterdir() if p.name.startswith(".") and p.name != ".lock"]
    leftovers += [p.name for p in (lineage / "versions").iterdir() if not p.name.isdigit()]
    if leftovers:
        problems.append(f"leftovers {leftovers}")
    if (lineage / "pending.json").exists():
        problems.append("pending.json left")
    state = json.loads((lineage / "state.json").read_text())
    if state.get("hook_pending") or state.get("failures"):
        problems.append(f"state {state}")
    return problems


def orders_for(front: AcmeFront, name: str) -> int:
    return sum(1 for order in front.recorded_orders() if name in [i.get("value") for i in order.get("identifiers", [])])


def killed_run(
    env: Env, store: Path, kill_at: int, *args: str, trace: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run ``certkeeper ARGS`` and SIGKILL it just before its ``kill_at``-th change to the store (0: never)."""
    command = [sys.executable, "-m", "testbench.faults", str(store), str(kill_at)]
    command += [str(trace)] if trace else []
    run_env = {**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))}
    with subprocess.Popen([*command, "--", *args], env=run_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True, start_new_session=True) as run:  # fmt: skip
        out, err = run.communicate(timeout=120)
        # What the run started dies with it, as when cron or systemd kill its whole group: a deploy
        # hook caught half-way must not finish after the test looked.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    return subprocess.CompletedProcess(run.args, run.returncode, out, err)


def count_points(env: Env, store: Path, trace: Path, *args: str) -> int:
    """How many changes to the store an uninterrupted run makes (it runs, on the given store)."""
    trace.unlink(missing_ok=True)
    result = killed_run(env, store, 0, *args, trace=trace)
    assert result.returncode == 0, result.stderr
    return len(trace.read_text().splitlines())
