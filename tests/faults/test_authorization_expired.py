"""The CA reports an authorization expired mid-order (its clock ran out after validation, before finalize;
the ACME front rewrites Pebble's answer): certkeeper places one new order, says so in one log line, and
gets the certificate in the same run (a second lapse in that order would be one error, no third order).
A validation that failed is no lapse: no second order."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from testbench.ari import AcmeFront, private_front
from testbench.command import Env, Run

if TYPE_CHECKING:
    from conftest import MakeEnv


def orders_for(ari: AcmeFront, name: str) -> int:
    return sum(1 for o in ari.recorded_orders() if o["identifiers"][0]["value"] == name)


def test_an_authorization_expired_mid_order_is_recovered_with_one_new_order_and_one_line(
    ari: AcmeFront, ari_env: Env, certkeeper: Run
) -> None:
    ari.authorizations_expire = 1
    run = certkeeper(ari_env, "issue", "lapsed.authz.test")
    said = [line for line in run.stderr.splitlines() if line.strip()]
    assert run.returncode == 0, said
    assert "issued lapsed.authz.test" in run.stdout
    assert ari.authorizations_expired == 1
    assert orders_for(ari, "lapsed.authz.test") == 2  # the one whose authorization lapsed, and one new
    assert len(said) == 1 and "authorization expired mid-order; placing one new order" in said[0], said


def test_a_failed_validation_is_not_taken_for_a_lapse_and_places_no_second_order(
    ari: AcmeFront, ari_env: Env, certkeeper: Run
) -> None:
    with socket.socket() as sock:  # HTTP-01 answered where the CA does not look: the authorization is invalid
        sock.bind(("127.0.0.1", 0))
        wrong_port = sock.getsockname()[1]
    run = certkeeper({**ari_env, "CERTKEEPER_HTTP_BIND": f"127.0.0.1:{wrong_port}"}, "issue", "refused.authz.test")
    assert run.returncode == 1
    assert "CA error connection" in run.stderr and "placing one new order" not in run.stderr, run.stderr
    assert orders_for(ari, "refused.authz.test") == 1


@pytest.fixture
def fresh_authz_front(tmp_path: Path) -> Iterator[AcmeFront]:
    # A Pebble that never reuses a valid authorization: the new order gets fresh ones, which can lapse too.
    with private_front(tmp_path / "pebble", env={"PEBBLE_AUTHZREUSE": "0"}) as front:
        yield front


def test_authorizations_lapsing_again_in_the_new_order_end_in_one_error_without_a_third_order(
    fresh_authz_front: AcmeFront, make_env: MakeEnv, certkeeper: Run, tmp_path: Path
) -> None:
    front = fresh_authz_front
    env = make_env(front.directory_url, front.ca_bundle, front.http_port, tmp_path / "store")
    front.authorizations_expire = 5
    run = certkeeper(env, "issue", "lapsing.authz.test")
    assert run.returncode == 1
    assert "authorization for lapsing.authz.test is expired again, in a new order" in run.stderr, run.stderr
    assert run.stderr.count("placing one new order") == 1
    assert orders_for(front, "lapsing.authz.test") == 2
    assert front.authorizations_expired == 2
