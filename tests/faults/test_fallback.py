"""A fallback CA: Pebble behind the ACME front is the first CA (refusing as told), Pebble itself the fallback."""

from __future__ import annotations

import datetime
import json
import socket
import time
from pathlib import Path

from testbench.ari import AcmeFront
from testbench.command import Env, Run


def meta(store: Path, name: str) -> dict[str, object]:
    return dict(json.loads((store / name / "meta.json").read_text()))


def test_a_rate_limited_first_ca_falls_back_and_renewal_returns_to_it(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, store: Path
) -> None:
    env = {**ari_env, "CERTKEEPER_FALLBACK_SERVER": ari.pebble.directory_url}
    ari.rate_limit_retry_after = 2
    run = certkeeper(env, "issue", "fb.fallback.test")
    assert run.returncode == 0, run.stderr
    assert f"ordering from the fallback CA {ari.pebble.directory_url}" in run.stderr
    assert "rateLimited" in run.stderr
    recorded = meta(store, "fb.fallback.test")
    assert recorded["issued_by_directory_url"] == ari.pebble.directory_url
    assert recorded["directory_url"] == ari.directory_url
    assert not ari.recorded_orders()  # the first CA created none
    # Within its Retry-After the first CA is not asked again: the fallback serves. (On a loaded machine the
    # first run can outlast the 2 s: then asking the first CA again is right, and it refuses again.)
    assert certkeeper(env, "issue", "--force", "fb.fallback.test").returncode == 0
    (refused_at, *later) = ari.recorded_new_order_times()
    assert all(t >= refused_at + 2 for t in later), (refused_at, later)
    # The first CA is healthy again and its Retry-After has passed: the next renewal goes back to it.
    ari.rate_limit_retry_after = None
    time.sleep(2.5)
    renewed = certkeeper(env, "renew", "--force")
    assert renewed.returncode == 0, renewed.stderr
    assert "fallback" not in renewed.stderr
    (order,) = ari.recorded_orders()
    assert "replaces" not in order  # the first CA did not issue the certificate it replaces
    assert "issued_by_directory_url" not in meta(store, "fb.fallback.test")


def test_a_validation_failure_does_not_fall_back(ari: AcmeFront, ari_env: Env, certkeeper: Run) -> None:
    with socket.socket() as sock:  # HTTP-01 answered where the CA does not look: every CA would refuse
        sock.bind(("127.0.0.1", 0))
        wrong_port = sock.getsockname()[1]
    env = {**ari_env, "CERTKEEPER_FALLBACK_SERVER": ari.pebble.directory_url,
           "CERTKEEPER_HTTP_BIND": f"127.0.0.1:{wrong_port}"}  # fmt: skip
    run = certkeeper(env, "issue", "invalid.fb.test")
    assert run.returncode == 1
    assert "CA error connection" in run.stderr and "ordering from the fallback CA" not in run.stderr


def test_a_passing_refusal_before_the_renewal_deadline_waits_for_the_first_ca_instead(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, store: Path
) -> None:
    env = {**ari_env, "CERTKEEPER_FALLBACK_SERVER": ari.pebble.directory_url}
    assert certkeeper(env, "issue", "wait.fallback.test").returncode == 0
    serial = meta(store, "wait.fallback.test")["serial"]
    # The first CA asks for the renewal now (ARI), then refuses it for an hour: the certificate held
    # is good for years, so the renewal waits for the first CA rather than move to the fallback.
    now = datetime.datetime.now(datetime.UTC)
    ari.window = (now - datetime.timedelta(hours=2), now - datetime.timedelta(hours=1))
    ari.rate_limit_retry_after = 3600
    run = certkeeper(env, "renew")
    said = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 1 and len(said) == 1, said  # one line: rate limited, will wait (Retry-After)
    assert "ordering from the fallback CA" not in said[0] and "rateLimited" in said[0], said
    assert meta(store, "wait.fallback.test")["serial"] == serial
    assert "issued_by_directory_url" not in meta(store, "wait.fallback.test")
