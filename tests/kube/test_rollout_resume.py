"""A rollout is resumed, never started again: a retry after a partial failure restarts only the targets
not done, and a ``certkeeper run`` killed mid-rollout replaces each RC pod once per change over any
number of kills (real apiserver, the kubelet stand-in, Pebble behind the ACME front)."""

from __future__ import annotations

import json
import random
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from lightkube import Client
from lightkube.resources.apps_v1 import Deployment
from runkit import (
    RC,
    ReadyWatch,
    certificate_manifest,
    certkeeper_controller,
    certkeeper_run,
    controller_args,
    get_secret,
    issuer_manifest,
    make_rc,
    ready_pods,
    seed_env,
    wait_for,
)

from testbench.ari import AcmeFront

if TYPE_CHECKING:
    from conftest import Kubectl


def annotations_of(client: Client, namespace: str, name: str) -> dict[str, str]:
    secret = get_secret(client, namespace, name)
    return dict((secret.metadata.annotations if secret and secret.metadata else None) or {})


def record_of(client: Client, namespace: str, name: str) -> dict[str, Any]:
    text = annotations_of(client, namespace, name).get("certkeeper.io/rollout-record")
    return dict(json.loads(text)) if text else {}


def generation(client: Client, namespace: str, name: str) -> int:
    found = client.get(Deployment, name, namespace=namespace)
    assert found.metadata is not None
    return int(found.metadata.generation or 0)


def rc_watch(client: Client, namespace: str, replicas: int) -> tuple[ReadyWatch, set[str]]:
    make_rc(client, namespace, replicas=replicas)
    old = wait_for(f"{replicas} Ready pods", lambda: (p := ready_pods(client, namespace)) and len(p) == replicas and p)
    watch = ReadyWatch(client, namespace)
    watch.start(initial=replicas)
    return watch, set(old)


def test_run_retries_only_the_target_that_failed(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    watch, old = rc_watch(kube_client, namespace, 2)
    env = seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url, DEPLOYMENTS="web")
    try:
        with certkeeper_run(env, tmp_path / "run.log") as run:
            # The RC is rolled; deployment/web does not exist yet: the rollout is tried again later.
            wait_for("the retry planned", lambda: "the rollout is tried again at" in run.log, run=run)
            assert "deployment/web not found" in run.log
            assert set(watch.deleted) == old, watch.deleted
            kubectl("create", "deployment", "web", "--image=nginx")
            wait_for("web created", lambda: generation(kube_client, namespace, "web") == 1)
            wait_for(
                "the retry done",
                lambda: (
                    annotations_of(kube_client, namespace, "certs-example.com").get("certkeeper.io/rollout") == "done"
                ),
                timeout=30,
                run=run,
            )
            time.sleep(1)  # a second restart of anything would show by now
            restarts = generation(kube_client, namespace, "web") - 1
            print(f"run: {len(watch.deleted)} pod deletions for one change (2 replicas), web restarted {restarts}x")
            # The RC's two pods were replaced once; the retry restarted web alone, once.
            assert sorted(watch.deleted) == sorted(old), f"pods deleted: {watch.deleted}"
            assert restarts == 1
            assert "replicationcontroller/nginx-ssl-proxy-api: restarted for this certificate already" in run.log
            record = record_of(kube_client, namespace, "certs-example.com")
            assert set(record["rolled"]) == {f"ReplicationController/{RC}", "Deployment/web"}, record
            assert len(ari.recorded_orders()) == 1
            assert run.stop() == 0
    finally:
        watch.stop()
    assert watch.minimum is not None and watch.minimum >= 1


def test_run_killed_mid_rc_rollout_replaces_each_pod_once(
    kube_client: Client, namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    watch, old = rc_watch(kube_client, namespace, 3)
    # A killed instance's Lease holds the next one off for 2 s only.
    env = seed_env(
        ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url, CERTKEEPER_LEASE_DURATION="2"
    )
    rng = random.Random(9)

    def done() -> bool:
        return annotations_of(kube_client, namespace, "certs-example.com").get("certkeeper.io/rollout") == "done"

    kills = 0
    try:
        while kills < 5 and not done():
            with certkeeper_run(env, tmp_path / f"run{kills}.log") as run:
                # Killed at a random moment after it began replacing a pod (before, during or after its wait).
                wait_for("a pod being replaced", lambda: "replacing pod" in run.log or done(), timeout=60, run=run)
                time.sleep(rng.uniform(0.0, 0.4))
                run.proc.send_signal(signal.SIGKILL)
                run.proc.wait(10)
            kills += 1
        with certkeeper_run(env, tmp_path / "last.log") as run:
            wait_for("its check", lambda: "still good until" in run.log, timeout=60, run=run)
            wait_for("the rollout finished", done, timeout=60, run=run)
            pods = wait_for("3 Ready pods", lambda: (p := ready_pods(kube_client, namespace)) and len(p) == 3 and p)
            assert run.stop() == 0
        time.sleep(1)
    finally:
        watch.stop()
    new = watch.seen - old
    print(f"{kills} SIGKILLs mid-rollout: {len(watch.deleted)} pod deletions, {len(new)} pods created (3 replicas)")
    assert kills >= 2, "the rollout finished before it could be interrupted twice"
    assert not pods & old, "an old pod was never replaced"
    assert sorted(watch.deleted) == sorted(old), f"each old pod deleted once, no new one: {watch.deleted}"
    assert len(new) == 3, f"pods created for one change: {sorted(new)}"
    assert watch.minimum is not None and watch.minimum >= 2, f"the RC dropped to {watch.minimum} Ready pods"
    assert len(ari.recorded_orders()) == 1


@pytest.mark.usefixtures("crds")
def test_controller_retries_only_the_target_that_failed(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    from test_controller import apply

    watch, old = rc_watch(kube_client, namespace, 2)
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(
        kubectl,
        certificate_manifest("web", ["web.example.com"], rollout=[f"replicationcontroller/{RC}", "deployment/web"]),
    )
    args = controller_args(namespace, ari.http_port)
    try:
        with certkeeper_controller(kubeconfig, tmp_path / "controller.log", *args) as run:
            wait_for("the failed rollout", lambda: "deployment/web not found" in run.log, timeout=60, run=run)
            wait_for("the RC rolled", lambda: set(watch.deleted) == old, timeout=30, run=run)
            kubectl("create", "deployment", "web", "--image=nginx")
            # Looked at again within the first retry delay (10 s), not at the next daily check.
            wait_for(
                "the retry done",
                lambda: annotations_of(kube_client, namespace, "web").get("certkeeper.io/rollout") == "done",
                timeout=30,
                run=run,
            )
            time.sleep(1)
            restarts = generation(kube_client, namespace, "web") - 1
            print(f"controller: {len(watch.deleted)} pod deletions (2 replicas), web restarted {restarts}x")
            assert sorted(watch.deleted) == sorted(old), f"pods deleted: {watch.deleted}"
            assert restarts == 1
            assert len(ari.recorded_orders()) == 1
            assert run.stop() == 0
    finally:
        watch.stop()
