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

    from testbench.cluster import Cluster


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
    """The RC made (``replicas`` > 0) or as it is, its Ready pods, and a watch counting its pods from now."""
    if replicas:
        make_rc(client, namespace, replicas=replicas)
    count = replicas or 3
    old = wait_for(f"{count} Ready pods", lambda: (p := ready_pods(client, namespace)) and len(p) == count and p)
    watch = ReadyWatch(client, namespace)
    watch.start(initial=count)
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


def test_a_malformed_rollout_record_is_reset_with_a_warning(
    kube_client: Client, namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    from lightkube.resources.core_v1 import Secret
    from lightkube.types import PatchType

    watch, old = rc_watch(kube_client, namespace, 1)
    env = seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url, RC_NAMES="")
    try:
        with certkeeper_run(env, tmp_path / "first.log") as run:
            wait_for("the certificate stored", lambda: "stored in Secret" in run.log, run=run)
            assert run.stop() == 0
        # A rollout owed, and its record damaged by hand.
        bad = {"certkeeper.io/rollout": "pending", "certkeeper.io/rollout-record": '{"digest": 7, "rolled": []}'}
        patch = {"metadata": {"annotations": bad}}
        kube_client.patch(Secret, "certs-example.com", patch, namespace=namespace, patch_type=PatchType.MERGE)
        with certkeeper_run(dict(env, RC_NAMES=RC), tmp_path / "second.log") as run:
            wait_for(
                "the rollout done",
                lambda: (
                    annotations_of(kube_client, namespace, "certs-example.com").get("certkeeper.io/rollout") == "done"
                ),
                run=run,
            )
            line = next(line for line in run.log.splitlines() if "rollout record" in line)
            assert "is malformed ('digest' is not a digest): reset" in line, line
            assert run.stop() == 0
    finally:
        watch.stop()
    assert watch.deleted == sorted(old)
    assert set(record_of(kube_client, namespace, "certs-example.com")["rolled"]) == {f"ReplicationController/{RC}"}
    assert len(ari.recorded_orders()) == 1


@pytest.mark.usefixtures("crds")
def test_controller_killed_mid_rollout_resumes_at_start_and_replaces_each_pod_once(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    from lightkube.resources.core_v1 import Secret
    from runkit import secret_bytes
    from test_controller import apply

    from certkeeper.crypto import cert_info, split_pem_chain

    make_rc(kube_client, namespace, replicas=3)
    wait_for("3 Ready pods", lambda: len(ready_pods(kube_client, namespace)) == 3)
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(kubectl, certificate_manifest("web", ["web.example.com"], rollout=[f"replicationcontroller/{RC}"]))
    args = controller_args(namespace, ari.http_port)

    def serial() -> str:
        secret = get_secret(kube_client, namespace, "web")
        return cert_info(split_pem_chain(secret_bytes(secret, "tls.crt"))[0]).serial if secret else ""

    def rolled() -> bool:
        return annotations_of(kube_client, namespace, "web").get("certkeeper.io/rollout") == "done"

    rng = random.Random(3)
    with certkeeper_controller(kubeconfig, tmp_path / "first.log", *args) as run:
        wait_for("the first rollout done", lambda: serial() and rolled(), timeout=60, run=run)
        first = serial()
        watch, old = rc_watch(kube_client, namespace, 0)
        # The Secret deleted: a new certificate, and its rollout cut by a SIGKILL. The Certificate stays
        # Ready in its status, so a restarted controller would not look at it for hours unless it
        # notices the rollout owed.
        kube_client.delete(Secret, "web", namespace=namespace)
        wait_for("the second rollout begun", lambda: run.log.count("replacing pod") > 3, timeout=60, run=run)
        time.sleep(rng.uniform(0.0, 0.4))
        run.proc.send_signal(signal.SIGKILL)
        run.proc.wait(10)

    def done() -> bool:
        return serial() not in ("", first) and rolled()

    kills = 1
    try:
        while kills < 3 and not done():
            with certkeeper_controller(kubeconfig, tmp_path / f"run{kills}.log", *args) as run:
                wait_for("a pod being replaced", lambda: "replacing pod" in run.log or done(), timeout=60, run=run)
                time.sleep(rng.uniform(0.0, 0.4))
                run.proc.send_signal(signal.SIGKILL)
                run.proc.wait(10)
            kills += 1
        with certkeeper_controller(kubeconfig, tmp_path / "last.log", *args) as run:
            wait_for("its first pass", lambda: "looked at once since leading" in run.log, timeout=30, run=run)
            wait_for("the rollout finished", done, timeout=30, run=run)
            wait_for("3 Ready pods", lambda: len(ready_pods(kube_client, namespace)) == 3)
            assert run.stop() == 0
        time.sleep(1)
    finally:
        watch.stop()
    new = watch.seen - old
    print(f"controller, {kills} SIGKILLs mid-rollout: {len(watch.deleted)} pod deletions, {len(new)} pods created")
    assert sorted(watch.deleted) == sorted(old), f"each old pod deleted once, no new one: {watch.deleted}"
    assert len(new) == 3, f"pods created for one change: {sorted(new)}"
    assert len(ari.recorded_orders()) == 2


def test_run_a_forbidden_target_is_retried_alone_once_allowed(
    kube_client: Client,
    namespace: str,
    kubectl: Kubectl,
    ari: AcmeFront,
    tmp_path: Path,
    cluster: Cluster,
) -> None:
    from test_run import service_account_kubeconfig

    rule = """  - apiGroups: ["apps"]
    resources: ["deployments", "statefulsets", "daemonsets"]
    verbs: ["get", "patch"]
"""
    role = (Path(__file__).resolve().parents[2] / "deploy" / "certkeeper" / "rbac.yaml").read_text()
    assert rule in role
    # The shipped Role, but deployments may be restarted by name, and only "front" at first.
    (tmp_path / "narrow.yaml").write_text(role.replace(rule, rule + '    resourceNames: ["front"]\n', 1))
    (tmp_path / "wide.yaml").write_text(role.replace(rule, rule + '    resourceNames: ["front", "back"]\n', 1))
    for name in ("front", "back"):
        kubectl("create", "deployment", name, "--image=nginx")
    kubectl("create", "serviceaccount", "certkeeper")
    kubectl("apply", "-f", str(tmp_path / "narrow.yaml"))
    config = service_account_kubeconfig(kube_client, namespace, cluster.server, cluster.ca_file, tmp_path / "sa")
    env = seed_env(
        ari.pebble, namespace, config, LETSENCRYPT_ENDPOINT=ari.directory_url, RC_NAMES="", DEPLOYMENTS="front back"
    )
    with certkeeper_run(env, tmp_path / "run.log") as run:
        wait_for("the retry planned", lambda: "the rollout is tried again at" in run.log, run=run)
        line = next(line for line in run.log.splitlines() if "cannot restart deployment/back" in line)
        assert "403" in line, line
        assert generation(kube_client, namespace, "front") == 2
        assert generation(kube_client, namespace, "back") == 1
        kubectl("apply", "-f", str(tmp_path / "wide.yaml"))
        wait_for(
            "the retry done",
            lambda: annotations_of(kube_client, namespace, "certs-example.com").get("certkeeper.io/rollout") == "done",
            timeout=30,
            run=run,
        )
        time.sleep(1)
        restarts = {n: generation(kube_client, namespace, n) - 1 for n in ("front", "back")}
        print(f"run, a 403 on one of two Deployments: restarts {restarts}")
        assert restarts == {"front": 1, "back": 1}, restarts
        assert run.stop() == 0
    assert len(ari.recorded_orders()) == 1
