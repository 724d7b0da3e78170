"""A CA that loses its database mid-order (Pebble SIGKILLed and started again, behind the ACME front): the
order in flight and the account are gone; certkeeper registers again with the same key, places one new
order, and says so in one log line. A private Pebble: the restart must not disturb other tests."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import MakeEnv

from testbench.ari import AcmeFront, start_front
from testbench.command import CERTKEEPER, Run
from testbench.pebble import start_pebble


@pytest.fixture
def private_front(tmp_path: Path) -> Iterator[AcmeFront]:
    pebble = start_pebble(tmp_path / "pebble")
    front = start_front(pebble)
    try:
        yield front
    finally:
        front.stop()
        pebble.stop()


def test_a_ca_restarted_mid_order_is_recovered_with_one_new_order_and_one_line(
    private_front: AcmeFront, make_env: MakeEnv, certkeeper: Run, tmp_path: Path
) -> None:
    front = private_front
    env = make_env(front.directory_url, front.ca_bundle, front.http_port, tmp_path / "store")
    assert certkeeper(env, "issue", "before.restart.test").returncode == 0
    finalizing = lambda: sum("/finalize-order/" in path for _, path in front.recorded_requests())  # noqa: E731
    before = finalizing()
    front.hold_finalize_s = 2.0  # certkeeper waits on its finalize while the CA goes down
    run = subprocess.Popen([CERTKEEPER, "issue", "mid.restart.test"], env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 30
    while finalizing() == before:
        assert time.monotonic() < deadline and run.poll() is None, "no finalize request"
        time.sleep(0.05)
    front.pebble.restart()
    front.hold_finalize_s = 0.0
    out, err = run.communicate(timeout=120)
    orders = [o for o in front.recorded_orders() if o["identifiers"][0]["value"] == "mid.restart.test"]
    print(f"CA restarted mid-order: exit {run.returncode}, {len(orders)} orders, {len(front.recorded_accounts())} "
          f"registrations; stderr: {err.strip()}")  # fmt: skip
    assert run.returncode == 0, err
    assert "issued mid.restart.test" in out
    said = [line for line in err.splitlines() if line.strip()]
    assert len(said) == 1 and "the CA no longer knew the ACME account" in said[0], err
    assert len(orders) == 2  # the one the CA forgot, and one new
    assert len(front.recorded_accounts()) == 2  # the first registration, and once again
    # The account registered again is kept: the next run orders with it, with nothing more to say.
    again = certkeeper(env, "issue", "after.restart.test")
    assert again.returncode == 0 and not again.stderr.strip(), again.stderr
