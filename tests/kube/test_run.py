"""``certkeeper run`` as the post's certificate container, against the real control plane and Pebble."""

from __future__ import annotations

import base64
import re
import subprocess
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Event, Secret
from runkit import (
    DOMAINS,
    RC,
    SECRET,
    ReadyWatch,
    certkeeper_run,
    get_secret,
    make_rc,
    ready_pods,
    secret_bytes,
    seed_env,
    wait_for,
)

from certkeeper.crypto import cert_info, key_matches_cert, split_pem_chain
from certkeeper.kube.secret_store import FFDHE2048_PEM
from testbench.pebble import Pebble

if TYPE_CHECKING:
    from conftest import Kubectl


def assert_good_secret(secret: Secret, pebble: Pebble, tmp_path: Path) -> str:
    """The Secret holds a chain that verifies against Pebble's root, covers DOMAINS, and matches its key."""
    chain = secret_bytes(secret, "proxycert")
    key = secret_bytes(secret, "proxykey")
    parts = split_pem_chain(chain)
    assert len(parts) >= 2, "proxycert is not a full chain"
    (tmp_path / "root.pem").write_bytes(pebble.root_pem())
    (tmp_path / "intermediates.pem").write_bytes(b"".join(parts[1:]))
    (tmp_path / "leaf.pem").write_bytes(parts[0])
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            str(tmp_path / "root.pem"),
            "-untrusted",
            str(tmp_path / "intermediates.pem"),
            str(tmp_path / "leaf.pem"),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    info = cert_info(parts[0])
    assert set(info.names) == set(DOMAINS.split())
    assert key_matches_cert(key, parts[0])
    assert secret_bytes(secret, "tls.crt") == chain and secret_bytes(secret, "tls.key") == key
    assert secret_bytes(secret, "dhparam") == FFDHE2048_PEM
    assert secret.metadata is not None and secret.metadata.annotations is not None
    assert secret.metadata.annotations["certkeeper.io/names"] == DOMAINS
    assert secret.metadata.annotations["certkeeper.io/not-after"] == info.not_after.isoformat()
    return str(info.serial)


def no_key_material(text: str, *keys: bytes) -> None:
    assert "PRIVATE KEY" not in text
    for key in keys:
        body = b"".join(line for line in key.splitlines() if line and not line.startswith(b"-----"))
        assert body[:40].decode() not in text
        assert base64.b64encode(key)[:40].decode() not in text


def rollout_state(client: Client, namespace: str) -> str | None:
    secret = get_secret(client, namespace)
    annotations = (secret.metadata.annotations if secret and secret.metadata else None) or {}
    return annotations.get("certkeeper.io/rollout")


def event_reasons(client: Client, namespace: str) -> list[str]:
    return [e.reason or "" for e in client.list(Event, namespace=namespace)]


def test_post_scenario_then_restart_then_secret_deleted(
    kube_client: Client, namespace: str, kubeconfig: Path, pebble: Pebble, tmp_path: Path
) -> None:
    make_rc(kube_client, namespace, replicas=2)
    old_pods = wait_for(
        "2 Ready pods of the RC", lambda: (p := ready_pods(kube_client, namespace)) and len(p) == 2 and p
    )
    watch = ReadyWatch(kube_client, namespace)
    watch.start(initial=2)
    env = seed_env(pebble, namespace, kubeconfig)
    log = tmp_path / "run.log"
    try:
        with certkeeper_run(env, log) as run:
            secret = wait_for("the Secret certs-example.com", lambda: get_secret(kube_client, namespace), run=run)

            def rolled() -> set[str] | None:
                now = ready_pods(kube_client, namespace)
                return now if len(now) == 2 and not now & old_pods else None

            new_pods = wait_for("every pod of the RC replaced by a Ready one", rolled, timeout=90, run=run)
            wait_for("the rollout logged", lambda: f"pod(s) of replicationcontroller/{RC}" in run.log, run=run)
            wait_for("the rollout recorded on the Secret", lambda: rollout_state(kube_client, namespace) == "done")
            # The health path of the original image, served all the time.
            port = env["CERTKEEPER_HTTP_BIND"].rsplit(":", 1)[1]
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/.well-known/acme-challenge/health", timeout=5) as r:
                assert r.read() == b"OK\n"
            assert run.stop() == 0
    finally:
        watch.stop()
    assert watch.minimum is not None and watch.minimum >= 1, f"the RC dropped to {watch.minimum} Ready pods"
    assert watch.events >= 4, "the pod watch saw no rollout"
    assert secret.type == "kubernetes.io/tls"
    serial = assert_good_secret(secret, pebble, tmp_path)
    key = secret_bytes(secret, "proxykey")
    reasons = event_reasons(kube_client, namespace)
    assert "Issued" in reasons and "Rolled" in reasons
    for event in kube_client.list(Event, namespace=namespace):
        no_key_material(event.message or "", key)
    no_key_material(log.read_text(), key)

    # Restart: the stored certificate is good, so no new order and no pod restarted.
    account = get_secret(kube_client, namespace, f"{SECRET}-acme-account")
    assert account is not None
    with certkeeper_run(env, tmp_path / "restart.log") as run:
        wait_for("the check after restart", lambda: run.log.count("still good until") >= 1, run=run)
        after = get_secret(kube_client, namespace)
        assert after is not None and cert_info(split_pem_chain(secret_bytes(after, "proxycert"))[0]).serial == serial
        assert ready_pods(kube_client, namespace) == new_pods, "a pod was restarted although nothing changed"
        again = get_secret(kube_client, namespace, f"{SECRET}-acme-account")
        assert again is not None and again.data == account.data, "a new ACME account was made"
        assert "ordering " not in run.log and "a certificate for" not in run.log

        # Someone deletes the Secret: it is issued again and stored, without waiting for the next check.
        kube_client.delete(Secret, SECRET, namespace=namespace)
        reissued = wait_for("the Secret stored again", lambda: get_secret(kube_client, namespace), run=run)
        assert_good_secret(reissued, pebble, tmp_path)
        assert cert_info(split_pem_chain(secret_bytes(reissued, "proxycert"))[0]).serial != serial
        assert run.stop() == 0


ROOT = Path(__file__).resolve().parents[2]


def service_account_kubeconfig(client: Client, namespace: str, cluster_server: str, ca_file: Path, path: Path) -> Path:
    """A kubeconfig holding the token of the ServiceAccount ``certkeeper`` (v1.20 makes token Secrets)."""
    from lightkube.resources.core_v1 import ServiceAccount

    from testbench.cluster import write_kubeconfig

    def token_secret() -> str | None:
        account = client.get(ServiceAccount, "certkeeper", namespace=namespace)
        return account.secrets[0].name if account.secrets else None

    name = wait_for("the certkeeper ServiceAccount's token", token_secret)
    token = secret_bytes(client.get(Secret, name, namespace=namespace), "token").decode()
    write_kubeconfig(path, cluster_server, ca_file, "certkeeper", token)
    return path


def test_deploy_manifests_apply_and_their_service_account_is_enough_and_no_more(
    kube_client: Client, namespace: str, kubectl: Kubectl, pebble: Pebble, tmp_path: Path, cluster: object
) -> None:
    from lightkube import KubeConfig
    from lightkube.core.exceptions import ApiError
    from lightkube.resources.apps_v1 import Deployment
    from lightkube.resources.core_v1 import Namespace, Service

    from testbench.cluster import Cluster

    assert isinstance(cluster, Cluster)
    applied = kubectl("apply", "-k", str(ROOT / "deploy" / "certkeeper"))
    assert "deployment.apps/certkeeper created" in applied.stdout
    service = kube_client.get(Service, "certs", namespace=namespace)
    assert service.spec is not None and service.spec.ports is not None and service.spec.ports[0].port == 80
    deployment = kube_client.get(Deployment, "certkeeper", namespace=namespace)
    assert deployment.spec is not None and deployment.spec.replicas == 1
    probe = deployment.spec.template.spec.containers[0].readinessProbe  # type: ignore[union-attr]
    assert (
        probe is not None and probe.httpGet is not None and probe.httpGet.path == "/.well-known/acme-challenge/health"
    )

    sa_config = service_account_kubeconfig(
        kube_client, namespace, cluster.server, cluster.ca_file, tmp_path / "sa-kubeconfig"
    )
    make_rc(kube_client, namespace, replicas=2)
    old_pods = wait_for("2 Ready pods", lambda: (p := ready_pods(kube_client, namespace)) and len(p) == 2 and p)
    env = seed_env(pebble, namespace, sa_config, WORKLOADS="deployment/certkeeper")
    with certkeeper_run(env, tmp_path / "run.log") as run:
        secret = wait_for(
            "the Secret, written with the ServiceAccount", lambda: get_secret(kube_client, namespace), run=run
        )
        wait_for(
            "the RC's pods replaced",
            lambda: (p := ready_pods(kube_client, namespace)) and len(p) == 2 and not p & old_pods,
            timeout=90,
            run=run,
        )

        def restarted() -> bool:
            template = kube_client.get(Deployment, "certkeeper", namespace=namespace).spec.template  # type: ignore[union-attr]
            annotations = (template.metadata.annotations if template.metadata else None) or {}
            return "kubectl.kubernetes.io/restartedAt" in annotations

        wait_for("deployment/certkeeper restarted", restarted, run=run)
        wait_for("the rollout events", lambda: event_reasons(kube_client, namespace).count("Rolled") >= 2, run=run)
        assert "Forbidden" not in run.log and not re.search(r"\b403\b", run.log), run.log
        assert run.stop() == 0
    assert_good_secret(secret, pebble, tmp_path)

    other = kube_client.create(cast(Namespace, Namespace.from_dict({"metadata": {"generateName": "other-"}})))
    assert other.metadata is not None and other.metadata.name is not None
    try:
        sa_client = Client(KubeConfig.from_file(sa_config))
        with pytest.raises(ApiError) as refused:
            sa_client.list(Secret, namespace=other.metadata.name).__iter__().__next__()
        assert refused.value.status.code == 403
        with pytest.raises(ApiError) as refused_get:
            sa_client.get(Secret, "anything", namespace=other.metadata.name)
        assert refused_get.value.status.code == 403
    finally:
        kube_client.delete(Namespace, other.metadata.name)


def test_a_rollout_interrupted_after_storing_is_finished_at_the_next_start(
    kube_client: Client, namespace: str, kubeconfig: Path, pebble: Pebble, tmp_path: Path
) -> None:
    from lightkube.types import PatchType

    make_rc(kube_client, namespace, replicas=2)
    old_pods = wait_for("2 Ready pods", lambda: (p := ready_pods(kube_client, namespace)) and len(p) == 2 and p)
    with certkeeper_run(seed_env(pebble, namespace, kubeconfig, RC_NAMES=""), tmp_path / "first.log") as run:
        wait_for("the rollout recorded", lambda: rollout_state(kube_client, namespace) == "done", run=run)
        assert run.stop() == 0
    stored = get_secret(kube_client, namespace)
    assert stored is not None and ready_pods(kube_client, namespace) == old_pods
    # As if certkeeper had been killed between writing the Secret and restarting the pods.
    patch = {"metadata": {"annotations": {"certkeeper.io/rollout": "pending"}}}
    kube_client.patch(Secret, SECRET, patch, namespace=namespace, patch_type=PatchType.MERGE)
    with certkeeper_run(seed_env(pebble, namespace, kubeconfig), tmp_path / "second.log") as run:
        wait_for("the rollout finished", lambda: rollout_state(kube_client, namespace) == "done", run=run)
        assert not ready_pods(kube_client, namespace) & old_pods
        assert "ordering " not in run.log
        assert run.stop() == 0
    after = get_secret(kube_client, namespace)
    assert after is not None and after.data == stored.data, "the certificate itself must not change"
