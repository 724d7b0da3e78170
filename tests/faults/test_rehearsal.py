"""The staging rehearsal, with Pebble itself as "staging" and Pebble behind the ACME front as "production"
(the front counts production's orders)."""

from __future__ import annotations

import socket

from testbench.ari import AcmeFront
from testbench.command import Env, Run


def production_orders(front: AcmeFront) -> int:
    return len(front.recorded_orders())


def test_a_new_name_set_is_rehearsed_first_and_said_so(ari: AcmeFront, ari_env: Env, certkeeper: Run) -> None:
    env = {**ari_env, "CERTKEEPER_REHEARSAL": ari.pebble.directory_url}
    run = certkeeper(env, "issue", "new.rehearsal.test")
    assert run.returncode == 0, run.stderr
    assert f"new.rehearsal.test: rehearsal at {ari.pebble.directory_url} passed" in run.stderr
    assert "issued new.rehearsal.test" in run.stdout
    assert production_orders(ari) == 1
    # A renewal of a name set already held is not rehearsed again.
    again = certkeeper(env, "issue", "--force", "new.rehearsal.test")
    assert again.returncode == 0 and "rehearsal" not in again.stderr
    assert production_orders(ari) == 2
    # A name added is a name set not held yet: rehearsed again, then ordered from production.
    added = certkeeper(env, "issue", "new.rehearsal.test", "www.new.rehearsal.test")
    assert added.returncode == 0, added.stderr
    assert f"new.rehearsal.test: rehearsal at {ari.pebble.directory_url} passed" in added.stderr
    assert production_orders(ari) == 3


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_failed_rehearsal_orders_nothing_from_production(ari: AcmeFront, ari_env: Env, certkeeper: Run) -> None:
    # HTTP-01 answered on a port the CA does not validate at: a misconfigured proxy, say.
    env = {**ari_env, "CERTKEEPER_REHEARSAL": ari.pebble.directory_url,
           "CERTKEEPER_HTTP_BIND": f"127.0.0.1:{free_port()}"}  # fmt: skip
    run = certkeeper(env, "issue", "broken.rehearsal.test")
    assert run.returncode == 1
    assert f"the rehearsal at {ari.pebble.directory_url} failed, so production was not asked" in run.stderr
    assert production_orders(ari) == 0 and not ari.recorded_new_order_times()
