"""kube-apiserver restarted while orders are in flight, on a private control plane.

Three restarts while the controller issues 20 certificates: every certificate ends Ready with its own key,
with one order each (none twice, so no Secret can be overwritten with an older certificate), and the
rate-limit ledger Secret counted them. Then kube-apiserver stopped exactly when the ACME front receives a
newOrder (or newAccount) request: with two controller replicas whose leader is SIGKILLed during the outage,
and with ``certkeeper run`` alone; each ends with one order, one account and a matching key."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Secret
from private_plane import Outage, apply, install_controller_resources, kubectl, ready
from runkit import (
    SECRET,
    certificate_manifest,
    certkeeper_controller,
    certkeeper_run,
    controller_args,
    get_secret,
    secret_bytes,
    seed_env,
    wait_for,
)
from test_controller_outage import private_cluster

from certkeeper.crypto import key_matches_cert, split_pem_chain
from certkeeper.kube.ledger_secret import events_of
from testbench import cluster as bench
from testbench.ari import AcmeFront

__all__ = ["private_cluster"]  # the fixture, shared with the outage test
CERTS, RESTARTS = 20, 3


def test_three_api_server_restarts_mid_run_cause_no_duplicate_order(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    install_controller_resources(cluster, ari)
    ari.post_delay_s = 0.05  # spread the orders over the restarts
    started = time.monotonic()
    args = controller_args("ctl", ari.http_port, "--concurrency=4")
    with certkeeper_controller(cluster.kubeconfig, tmp_path / "controller.log", *args) as run:
        for i in range(CERTS):
            apply(cluster, certificate_manifest(f"r{i}", [f"r{i}.restart.example.com"]))
        for mark in (3, 8, 13)[:RESTARTS]:
            wait_for(f"{mark} orders", lambda m=mark: len(ari.recorded_orders()) >= m, timeout=120, run=run)
            cluster.restart("kube-apiserver", down_s=1.0)
        for i in range(CERTS):
            wait_for(f"r{i} Ready", lambda i=i: ready(cluster, f"r{i}"), timeout=180, run=run)
        assert run.stop() == 0
    orders = sorted(o["identifiers"][0]["value"] for o in ari.recorded_orders())
    client = Client(KubeConfig.from_file(cluster.kubeconfig), namespace="ctl")
    mismatches = 0
    for i in range(CERTS):
        secret = client.get(Secret, f"r{i}", namespace="ctl")
        leaf = split_pem_chain(secret_bytes(secret, "tls.crt"))[0]
        mismatches += not key_matches_cert(secret_bytes(secret, "tls.key"), leaf)
    ledger = client.get(Secret, "certkeeper-rate-limits", namespace="ctl")
    assert ledger.data is not None
    counted = sum(1 for e in events_of(ledger) if e["kind"] == "order")
    client.close()
    print(f"kube-apiserver restarts: {RESTARTS}, {CERTS} certificates, {len(orders)} orders, ledger {counted}, "
          f"{mismatches} key mismatches, {time.monotonic() - started:.0f} s")  # fmt: skip
    assert orders == sorted(f"r{i}.restart.example.com" for i in range(CERTS)), "an order was placed twice"
    assert mismatches == 0
    assert counted >= len(orders)


def lease_holder(cluster: bench.Cluster) -> str:
    result = kubectl(cluster, "get", "lease", "certkeeper-controller", "-o", "json")
    if result.returncode != 0:
        return ""
    return str((json.loads(result.stdout).get("spec") or {}).get("holderIdentity") or "")


def test_leader_killed_while_the_api_is_down_mid_order_the_other_replica_resumes_it(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    install_controller_resources(cluster, ari)
    outage = Outage(cluster, ari, hold_authorizations=True)
    args = controller_args("ctl", ari.http_port)
    with certkeeper_controller(cluster.kubeconfig, tmp_path / "a.log", *args) as first:
        wait_for("the first replica leads", lambda: lease_holder(cluster).endswith(f"-{first.proc.pid}"), run=first)
        with certkeeper_controller(cluster.kubeconfig, tmp_path / "b.log", *args) as second:
            wait_for("the second replica's caches", lambda: "caches synced" in second.log, run=second)
            apply(cluster, certificate_manifest("outage", ["outage.restart.example.com"]))
            # The order reaches the CA while kube-apiserver is down: the leader cannot record its URL, and is
            # killed before the API server is back (it cannot fetch the order's authorizations meanwhile).
            wait_for("the order placed during the outage", lambda: len(ari.recorded_orders()) == 1, timeout=60,
                     run=first)  # fmt: skip
            first.proc.kill()
            first.proc.wait(10)
            outage.end()
            wait_for("Ready, finished by the other replica", lambda: ready(cluster, "outage"), timeout=120,
                     run=second)  # fmt: skip
            assert second.stop() == 0
    client = Client(KubeConfig.from_file(cluster.kubeconfig), namespace="ctl")
    secret = client.get(Secret, "outage", namespace="ctl")
    leaf = split_pem_chain(secret_bytes(secret, "tls.crt"))[0]
    client.close()
    orders, accounts = len(ari.recorded_orders()), len(ari.recorded_accounts())
    print(f"leader SIGKILLed during an API outage mid-order: {orders} order(s), {accounts} account(s)")
    assert key_matches_cert(secret_bytes(secret, "tls.key"), leaf)
    assert orders == 1, "the new leader placed a second order"
    assert accounts == 1


def test_run_through_an_api_outage_mid_order_places_one_order(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    subprocess.run([str(cluster.kubectl), "create", "namespace", "run"], env=env, check=True, capture_output=True)
    outage = Outage(cluster, ari)
    run_env = seed_env(ari.pebble, "run", cluster.kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url, RC_NAMES="")
    with certkeeper_run(run_env, tmp_path / "run.log") as run:
        # Issued while kube-apiserver is down: neither the order's URL nor the certificate can be written.
        wait_for("the certificate issued during the outage", lambda: "could not get a certificate" in run.log,
                 timeout=90, run=run)  # fmt: skip
        assert outage.down.is_set()
        outage.end()
        wait_for("the certificate stored", lambda: "stored in Secret" in run.log, timeout=120, run=run)
        assert run.stop() == 0
    client = Client(KubeConfig.from_file(cluster.kubeconfig), namespace="run")
    secret = get_secret(client, "run")
    assert secret is not None
    leaf = split_pem_chain(secret_bytes(secret, "proxycert"))[0]
    leftover = get_secret(client, "run", f"{SECRET}-order")
    client.close()
    orders, accounts = len(ari.recorded_orders()), len(ari.recorded_accounts())
    print(f"run through an API outage mid-order: {orders} order(s), {accounts} account(s)")
    assert key_matches_cert(secret_bytes(secret, "proxykey"), leaf)
    assert orders == 1, "the order was placed again"
    assert accounts == 1
    assert leftover is None, "the finished order is still recorded"


def test_leader_killed_while_the_api_is_down_at_registration_the_other_replica_finds_the_account(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    install_controller_resources(cluster, ari)
    outage = Outage(cluster, ari, at=ari.new_account_path)
    args = controller_args("ctl", ari.http_port)
    with certkeeper_controller(cluster.kubeconfig, tmp_path / "a.log", *args) as first:
        wait_for("the first replica leads", lambda: lease_holder(cluster).endswith(f"-{first.proc.pid}"), run=first)
        with certkeeper_controller(cluster.kubeconfig, tmp_path / "b.log", *args) as second:
            wait_for("the second replica's caches", lambda: "caches synced" in second.log, run=second)
            apply(cluster, certificate_manifest("account", ["account.restart.example.com"]))
            # The CA registers the account while kube-apiserver is down: its URL cannot be stored.
            wait_for("the account registered during the outage", lambda: len(ari.recorded_accounts()) == 1,
                     timeout=60, run=first)  # fmt: skip
            first.proc.kill()
            first.proc.wait(10)
            outage.end()
            wait_for("Ready, issued by the other replica", lambda: ready(cluster, "account"), timeout=120,
                     run=second)  # fmt: skip
            assert second.stop() == 0
    orders, accounts = len(ari.recorded_orders()), len(ari.recorded_accounts())
    print(f"leader SIGKILLed during an API outage at registration: {orders} order(s), {accounts} account(s)")
    assert accounts == 1, "the new leader registered a second account"
    assert orders == 1


def test_an_order_still_in_flight_when_the_lease_is_regained_is_not_placed_twice(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    install_controller_resources(cluster, ari)
    # The newOrder request reaches the CA only after the outage, once the replica leads again: the worker that
    # sent it was stopped with the Lease (its thread goes on), and the next worker must not order beside it.
    outage = Outage(cluster, ari, hold_request=True)
    args = controller_args("ctl", ari.http_port)
    with certkeeper_controller(cluster.kubeconfig, tmp_path / "controller.log", *args) as run:
        apply(cluster, certificate_manifest("zombie", ["zombie.restart.example.com"]))
        wait_for("the Lease lost in the outage", lambda: "lost the Lease" in run.log, timeout=60, run=run)
        outage.end()
        wait_for("leading again", lambda: run.log.count("leads: it places the orders") == 2, timeout=60, run=run)
        wait_for("the next worker waiting for the order in flight", lambda: "still has in flight" in run.log,
                 timeout=60, run=run)  # fmt: skip
        outage.release()
        wait_for("Ready", lambda: ready(cluster, "zombie"), timeout=120, run=run)
        assert run.stop() == 0
    orders = len(ari.recorded_orders())
    print(f"an order in flight across a lost and regained Lease: {orders} order(s)")
    assert orders == 1, "a second order was placed beside the one in flight"
