"""``certkeeper run`` never wastes the CA's rate limits: each fault counts the orders and accounts the
CA saw (through the ACME front), against the real control plane and Pebble."""

from __future__ import annotations

import json
import random
import signal
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lightkube import Client
from runkit import (
    RC,
    SECRET,
    ReadyWatch,
    certkeeper_run,
    get_secret,
    make_rc,
    ready_pods,
    seed_env,
    wait_for,
)

from testbench.ari import AcmeFront

if TYPE_CHECKING:
    from conftest import Kubectl


def env_for(ari: AcmeFront, namespace: str, kubeconfig: Path, **extra: str) -> dict[str, str]:
    return seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url, **extra)


def rollout_state(client: Client, namespace: str) -> str | None:
    secret = get_secret(client, namespace)
    annotations = (secret.metadata.annotations if secret and secret.metadata else None) or {}
    return annotations.get("certkeeper.io/rollout")


def test_a_refused_secret_write_is_retried_without_a_second_order(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    existing = len(json.loads(kubectl("get", "secrets", "-o", "json").stdout)["items"])
    # Room for the ACME account and the rate-limit ledger, not for the order record nor the certificate's
    # Secret: both writes are refused; the order placed is finished and kept in memory, never placed again.
    kubectl("create", "quota", "secrets", f"--hard=count/secrets={existing + 2}")

    def counted() -> Any:
        found = json.loads(kubectl("get", "resourcequota", "secrets", "-o", "json").stdout)
        return (found.get("status") or {}).get("used")

    wait_for("the quota counted", counted)
    with certkeeper_run(env_for(ari, namespace, kubeconfig, RC_NAMES=""), tmp_path / "run.log") as run:
        wait_for("both refused writes reported", lambda: run.log.count("exceeded quota") >= 2, timeout=60, run=run)
        assert get_secret(kube_client, namespace) is None
        assert len(ari.recorded_orders()) == 1
        assert "could not record the order in flight" in run.log and "finishing it anyway" in run.log
        kubectl("delete", "quota", "secrets")
        wait_for("the Secret written", lambda: get_secret(kube_client, namespace), timeout=90, run=run)
        assert len(ari.recorded_orders()) == 1, "the certificate was ordered again"
        assert len(ari.recorded_accounts()) == 1
        assert run.stop() == 0


def test_a_missing_namespace_registers_no_account(
    kube_client: Client, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    missing = f"absent-{random.randrange(10**6)}"
    with certkeeper_run(env_for(ari, missing, kubeconfig, RC_NAMES=""), tmp_path / "run.log") as run:
        wait_for("the failed try", lambda: "could not get a certificate" in run.log, timeout=30, run=run)
        assert ari.recorded_accounts() == [], "an account was registered for a namespace that does not exist"
        assert ari.recorded_orders() == []
        line = next(line for line in run.log.splitlines() if f'namespace "{missing}"' in line)
        assert "not found" in line and "NAMESPACE" in line and "next try -" not in line, line
        assert run.stop() == 0


def test_sigkills_during_the_first_issuance_resume_one_order(
    kube_client: Client, namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    # A killed instance's Lease expires in 2 s (in a pod, the restarted container takes its own back at once).
    env = env_for(ari, namespace, kubeconfig, RC_NAMES="", CERTKEEPER_LEASE_DURATION="2")
    ari.hold_finalize_s = 1.5
    rng = random.Random(15)

    def finalizes() -> int:
        return sum(1 for method, path in ari.recorded_requests() if method == "POST" and "/finalize-order/" in path)

    kills = 0
    while kills < 10 and get_secret(kube_client, namespace) is None:
        before = finalizes()
        with certkeeper_run(env, tmp_path / f"run{kills}.log") as run:
            # Killed at a random moment up to the finalize (held at the front), or after it.
            delay = rng.uniform(0.3, 3.0)
            deadline = time.monotonic() + delay
            while time.monotonic() < deadline and finalizes() == before and run.alive():
                time.sleep(0.05)
            run.proc.send_signal(signal.SIGKILL)
            run.proc.wait(10)
        kills += 1
    ari.hold_finalize_s = 0.0
    with certkeeper_run(env, tmp_path / "last.log") as run:
        wait_for("the Secret checked", lambda: "still good until" in run.log or "stored in Secret" in run.log, run=run)
        assert get_secret(kube_client, namespace) is not None
        assert run.stop() == 0
    print(f"{kills} SIGKILLs: {len(ari.recorded_orders())} order(s), {len(ari.recorded_accounts())} account(s)")
    assert kills >= 3, "the first issuance finished before it could be interrupted"
    assert len(ari.recorded_accounts()) == 1, ari.recorded_accounts()
    assert len(ari.recorded_orders()) == 1, f"{len(ari.recorded_orders())} orders over {kills} SIGKILLs"


def test_a_secret_replaced_with_the_same_data_is_adopted(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    make_rc(kube_client, namespace, replicas=1)
    wait_for("1 Ready pod", lambda: len(ready_pods(kube_client, namespace)) == 1)
    with certkeeper_run(env_for(ari, namespace, kubeconfig), tmp_path / "run.log") as run:
        wait_for("the rollout recorded", lambda: rollout_state(kube_client, namespace) == "done", timeout=90, run=run)
        pods = wait_for("1 Ready pod", lambda: (p := ready_pods(kube_client, namespace)) and len(p) == 1 and p)
        stored = json.loads(kubectl("get", "secret", SECRET, "-o", "json").stdout)
        # What an operator re-applies: the type and the data, none of certkeeper's annotations.
        manifest = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": SECRET},
            "type": stored["type"],
            "data": stored["data"],
        }
        (tmp_path / "secret.json").write_text(json.dumps(manifest))
        kubectl("replace", "--force", "-f", str(tmp_path / "secret.json"))
        wait_for("the replacement noticed", lambda: "deleted by someone else" in run.log, timeout=30, run=run)
        # The check that follows: no order, the Secret adopted, and nothing rolled.
        wait_for("the check after it", lambda: run.log.count("still good until") >= 1, timeout=30, run=run)
        time.sleep(2)
        assert len(ari.recorded_orders()) == 1, "a valid certificate was ordered again"
        assert ready_pods(kube_client, namespace) == pods, f"{RC} was rolled for the same certificate"
        after = get_secret(kube_client, namespace)
        assert after is not None and after.data == stored["data"]
        assert run.stop() == 0


def test_two_instances_register_one_account_and_order_once(
    kube_client: Client, namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    make_rc(kube_client, namespace, replicas=2)
    wait_for("2 Ready pods", lambda: len(ready_pods(kube_client, namespace)) == 2)
    watch = ReadyWatch(kube_client, namespace)
    watch.start(initial=2)
    env = env_for(ari, namespace, kubeconfig)
    # Each instance answers HTTP-01 on its own address and Pebble validates on the first's only (in a
    # cluster a Service sends the CA to either): so the first takes the Lease, then the second starts.
    second = dict(env, CERTKEEPER_HTTP_BIND="127.0.0.2:" + env["CERTKEEPER_HTTP_BIND"].rsplit(":", 1)[1])
    # The first's finalize waits at the ACME front until the second has found the Lease held: however fast
    # the first is and slow the second starts, they overlap.
    overlapping = threading.Event()
    ari.before_request = lambda method, path: "/finalize-order/" in path and overlapping.wait(60)
    try:
        with certkeeper_run(env, tmp_path / "one.log") as one:
            wait_for("the first ordering (holding the Lease)", lambda: "ordering " in one.log, run=one)
            with certkeeper_run(second, tmp_path / "two.log") as two:
                wait_for("the second waiting", lambda: "another instance holds the Lease" in two.log, run=two)
                overlapping.set()
                wait_for("the rollout recorded", lambda: rollout_state(kube_client, namespace) == "done", 90, one)
                # The second checks once the first gives the Lease back: the certificate is stored already.
                wait_for("the second's check", lambda: "still good until" in two.log, 30, two)
                assert len(ari.recorded_accounts()) == 1, ari.recorded_accounts()
                assert len(ari.recorded_orders()) == 1, ari.recorded_orders()
                assert two.stop() == 0
            assert one.stop() == 0
    finally:
        overlapping.set()
        watch.stop()
    assert watch.minimum is not None and watch.minimum >= 1, f"the RC dropped to {watch.minimum} Ready pods"


def test_rc_names_naming_a_deployment_is_said_at_start_and_the_rollout_stays_pending(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    kubectl("create", "deployment", "web", "--image=nginx")
    with certkeeper_run(env_for(ari, namespace, kubeconfig, RC_NAMES="web"), tmp_path / "run.log") as run:
        wait_for("the retry planned", lambda: "the rollout is tried again at" in run.log, run=run)
        start = next(line for line in run.log.splitlines() if "RC_NAMES:" in line)
        assert "deployment/web exists: put web in DEPLOYMENTS, not RC_NAMES" in start, start
        # Not recorded as done: it is tried again, and a restart finishes it.
        assert rollout_state(kube_client, namespace) == "pending"
        assert run.stop() == 0
    with certkeeper_run(env_for(ari, namespace, kubeconfig, RC_NAMES="", DEPLOYMENTS="web"), tmp_path / "2.log") as run:
        wait_for("the rollout done", lambda: rollout_state(kube_client, namespace) == "done", run=run)
        assert "ordering " not in run.log
        assert run.stop() == 0
    assert len(ari.recorded_orders()) == 1


def test_a_malformed_state_annotation_is_reset_with_a_warning_and_stops_nothing(
    kube_client: Client, namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    from lightkube.resources.core_v1 import Secret
    from lightkube.types import PatchType

    env = env_for(ari, namespace, kubeconfig, RC_NAMES="")
    with certkeeper_run(env, tmp_path / "first.log") as run:
        wait_for("the first certificate", lambda: "stored in Secret" in run.log, run=run)
        assert run.stop() == 0
    bad = json.dumps({"failures": "many", "retry_after": "soon", "names": 7})
    patch = {"metadata": {"annotations": {"certkeeper.io/state": bad}}}
    kube_client.patch(Secret, SECRET, patch, namespace=namespace, patch_type=PatchType.MERGE)
    with certkeeper_run(env, tmp_path / "second.log") as run:
        wait_for("the check", lambda: "still good until" in run.log, timeout=30, run=run)
        assert "failures" in run.log and "'failures' is not a count" in run.log, run.log
        # The bad state is not kept in memory either: a deleted Secret is issued again at once.
        kube_client.delete(Secret, SECRET, namespace=namespace)
        wait_for("issued again", lambda: run.log.count("stored in Secret") == 1, timeout=30, run=run)
        assert run.stop() == 0
    assert len(ari.recorded_orders()) == 2
