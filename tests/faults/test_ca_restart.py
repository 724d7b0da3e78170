"""A CA that loses its database mid-order (Pebble SIGKILLed and started again, behind the ACME front): the
order in flight and the account are gone; certkeeper registers again with the same key, places one new
order, and says so in one log line. A private Pebble: the restart must not disturb other tests."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from testbench.ari import AcmeFront
from testbench.command import Run

if TYPE_CHECKING:
    from conftest import MakeEnv


def test_a_ca_restarted_mid_order_is_recovered_with_one_new_order_and_one_line(
    private_front: AcmeFront, make_env: MakeEnv, certkeeper: Run, tmp_path: Path
) -> None:
    front = private_front
    env = make_env(front.directory_url, front.ca_bundle, front.http_port, tmp_path / "store")
    assert certkeeper(env, "issue", "before.restart.test").returncode == 0
    restarted = front.restart_ca_at("/finalize-order/")
    first = certkeeper(env, "issue", "mid.restart.test")
    front.before_request = None
    runs = [first]
    if first.returncode != 0:  # the CA answered the held request with an error: the next run recovers
        runs.append(certkeeper(env, "issue", "--force", "mid.restart.test"))
    orders = [o for o in front.recorded_orders() if o["identifiers"][0]["value"] == "mid.restart.test"]
    said = [line for run in runs for line in run.stderr.splitlines() if line.strip()]
    print(f"CA restarted mid-order: {len(runs)} run(s), exit {runs[-1].returncode}, {len(orders)} orders, "
          f"{len(front.recorded_accounts())} registrations; stderr: {said}")  # fmt: skip
    assert restarted
    assert runs[-1].returncode == 0, said
    assert "issued mid.restart.test" in runs[-1].stdout
    assert len(said) == len(runs) and "the CA no longer knew the ACME account" in said[-1], said
    assert len(orders) == 2  # the one the CA forgot, and one new
    assert len(front.recorded_accounts()) == 2  # the first registration, and once again
    # The account registered again is kept: the next run orders with it, with nothing more to say.
    again = certkeeper(env, "issue", "after.restart.test")
    assert again.returncode == 0 and not again.stderr.strip(), again.stderr


def test_a_ca_restarted_mid_renewal_is_recovered_with_one_new_order_and_one_line(
    private_front: AcmeFront, make_env: MakeEnv, certkeeper: Run, tmp_path: Path
) -> None:
    front = private_front
    env = make_env(front.directory_url, front.ca_bundle, front.http_port, tmp_path / "store")
    assert certkeeper(env, "issue", "renewed.restart.test").returncode == 0
    front.window_in_past()  # due now (ARI)
    restarted = front.restart_ca_at("/finalize-order/")
    runs = [certkeeper(env, "renew")]
    if runs[0].returncode != 0:  # the CA answered the held request with an error: the next run recovers
        runs.append(certkeeper(env, "renew", "--force"))
    orders = [o for o in front.recorded_orders() if o["identifiers"][0]["value"] == "renewed.restart.test"]
    said = [[line for line in run.stderr.splitlines() if line.strip()] for run in runs]
    print(f"renew, CA restarted mid-renewal: {len(runs)} run(s), {len(orders)} orders, "
          f"{len(front.recorded_accounts())} registrations; stderr: {said}")  # fmt: skip
    assert restarted and runs[-1].returncode == 0, said
    assert all(len(lines) == 1 for lines in said), said  # one line per run
    assert "the CA no longer knew the ACME account" in said[-1][0], said
    assert len(orders) == 3  # the first issuance, the renewal the CA forgot, and one new
    assert len(front.recorded_accounts()) == 2
