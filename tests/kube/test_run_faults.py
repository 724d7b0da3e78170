"""Faults at the CA against ``certkeeper run`` (the host versions are in tests/faults/): the real control
plane, real Pebble behind the ACME front, which injects the faults and counts what reached the CA.
Each test prints its figures (docs/reliability.md records them)."""

from __future__ import annotations

from pathlib import Path

import pytest
from lightkube import Client
from runkit import certkeeper_run, get_secret, secret_bytes, seed_env, wait_for

from certkeeper.crypto import cert_info, key_matches_cert, split_pem_chain
from testbench.ari import AcmeFront


def good_secret(client: Client, namespace: str, name: str, names: set[str]) -> bool:
    """The Secret holds a certificate for ``names`` whose key is beside it."""
    secret = get_secret(client, namespace, name)
    if secret is None or not (secret.data or {}).get("proxycert"):
        return False
    leaf = split_pem_chain(secret_bytes(secret, "proxycert"))[0]
    return set(cert_info(leaf).names) == names and key_matches_cert(secret_bytes(secret, "proxykey"), leaf)


def problem_lines(log: str) -> list[str]:
    """What the run said above INFO, less the start-up note that nothing is restarted (RC_NAMES empty)."""
    return [line for line in log.splitlines() if (" ERROR " in line or " WARNING " in line) and "RC_NAMES" not in line]


def orders_for(front: AcmeFront, suffix: str) -> int:
    return sum(
        1 for o in front.recorded_orders() if any(i.get("value", "").endswith(suffix) for i in o.get("identifiers", []))
    )


def test_run_under_half_the_nonces_rejected_issues_each_certificate_with_one_order(
    kube_client: Client, namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    ari.bad_nonce_rate = 0.5
    certificates = 4
    for i in range(certificates):  # one Secret per run, as the seed's container keeps
        names = {f"c{i}.nonce.example.com", f"www.c{i}.nonce.example.com"}
        env = seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url, RC_NAMES="",
                       DOMAINS=" ".join(sorted(names)))  # fmt: skip
        with certkeeper_run(env, tmp_path / f"run{i}.log") as run:
            wait_for(f"certificate {i} stored", lambda n=names: good_secret(  # type: ignore[misc]
                kube_client, namespace, f"certs-{min(n)}", n), timeout=90, run=run)  # fmt: skip
            assert run.stop() == 0
        assert not problem_lines(run.log), run.log  # badNonce is retried quietly
    orders = orders_for(ari, "nonce.example.com")
    print(f"run, badNonce 50 %: {ari.bad_nonces_sent} rejected, {certificates} certificates, {orders} orders")
    assert ari.bad_nonces_sent >= certificates * 2  # the fault did happen, often
    assert orders <= certificates * 1.1  # ≤ 1.1 × certificates: no order abandoned for a stale nonce


@pytest.mark.parametrize("fault", ["rateLimited", "unavailable"])
def test_run_sends_no_new_order_before_the_retry_after_even_when_restarted(
    fault: str, namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    if fault == "rateLimited":
        ari.rate_limit_retry_after = 3600
    else:
        ari.unavailable_retry_after = 3600
    env = seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url, RC_NAMES="")
    with certkeeper_run(env, tmp_path / "refused.log") as run:
        refused = wait_for("the refusal said", lambda: problem_lines(run.log), timeout=60, run=run)
        assert run.stop() == 0
    # A new process (a pod replaced) starts with no memory: the ledger Secret holds the Retry-After.
    with certkeeper_run(env, tmp_path / "restarted.log") as run:
        held = wait_for("the wait said", lambda: problem_lines(run.log), timeout=60, run=run)
        assert run.stop() == 0
    times = ari.recorded_new_order_times()
    print(f"run, {fault} with Retry-After 3600: 2 processes, {len(times)} newOrder request(s), "
          f"{len(times) - 1} after the first")  # fmt: skip
    assert len(refused) == 1 and ("rateLimited" in refused[0] or "503" in refused[0] or "serverInternal" in refused[0])
    assert len(held) == 1 and "not ordering: the CA's Retry-After" in held[0], held
    assert len(times) == 1, times  # the refused one only: nothing more before the Retry-After elapses
    assert not ari.recorded_orders()


def test_run_recovers_from_a_ca_restarted_mid_order_with_one_new_order_and_one_line(
    kube_client: Client, namespace: str, kubeconfig: Path, private_front: AcmeFront, tmp_path: Path
) -> None:
    front = private_front
    names = {"example.com", "foo.example.com"}
    env = seed_env(front.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=front.directory_url, RC_NAMES="")
    restarted = front.restart_ca_at("/finalize-order/")
    logs = [tmp_path / "run.log"]
    with certkeeper_run(env, logs[0]) as run:
        stored = lambda: good_secret(kube_client, namespace, "certs-example.com", names)  # noqa: E731
        # (A WARNING is the recovery under way in this attempt: wait for its end.)
        failed = lambda: any(" ERROR " in line for line in problem_lines(run.log))  # noqa: E731
        wait_for("the certificate stored or an error said", lambda: stored() or failed(), run=run)
        if not stored():
            # The held finalize was answered with an error (the front lost its connection to the old CA, as a
            # proxy answers 502): a pod restart stands in for the loop's next try, one minute later.
            assert run.stop() == 0
            logs.append(tmp_path / "again.log")
    if len(logs) == 2:
        with certkeeper_run(env, logs[1]) as run:
            wait_for("the certificate stored", stored, timeout=60, run=run)
            assert run.stop() == 0
    said = [problem_lines(log.read_text()) for log in logs]
    orders = orders_for(front, "example.com")
    print(f"run, CA restarted mid-order: {len(logs)} attempt(s), {orders} orders, "
          f"{len(front.recorded_accounts())} registrations; said: {said}")  # fmt: skip
    assert restarted
    assert all(len(lines) == 1 for lines in said), said  # one line per attempt
    assert "the CA no longer knew the ACME account" in said[-1][0], said
    assert orders == 2  # the one the CA forgot, and one new
    assert len(front.recorded_accounts()) == 2  # the first registration, and once again with the same key
    # Its lesser lines give no advice meant for a host's store (the run registers again by itself).
    assert not any("account directory" in log.read_text() for log in logs)
