"""``certkeeper run`` and ``certkeeper controller`` reconcile through one sequence: what one of them did
before, the other does now. Each test runs in both modes on the real control plane and Pebble."""

from __future__ import annotations

import base64
import json
import tempfile
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Event, Secret
from lightkube.types import PatchType
from runkit import (
    SECRET,
    Run,
    certificate_manifest,
    certkeeper_controller,
    certkeeper_run,
    controller_args,
    get_secret,
    issuer_manifest,
    secret_bytes,
    seed_env,
    wait_for,
)

from testbench.ari import AcmeFront

if TYPE_CHECKING:
    from conftest import Kubectl

pytestmark = pytest.mark.usefixtures("crds")
Start = Callable[[], AbstractContextManager[Run]]


def start_mode(
    mode: str, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path, deployment: str = ""
) -> tuple[Start, str]:
    """How to start ``mode`` for one certificate with the seed's keys (restarting ``deployment`` after a
    change, if given), and the Secret it writes."""
    if mode == "run":
        env = seed_env(
            ari.pebble,
            namespace,
            kubeconfig,
            LETSENCRYPT_ENDPOINT=ari.directory_url,
            RC_NAMES="",
            DEPLOYMENTS=deployment,
        )
        return lambda: certkeeper_run(env, tmp_path / "run.log"), SECRET
    rollout = [f"deployment/{deployment}"] if deployment else []
    with tempfile.TemporaryDirectory() as scratch:
        for number, manifest in enumerate(
            (
                issuer_manifest("pebble", ari.directory_url, ari.ca_bundle),
                certificate_manifest("web", ["web.example.com"], keys="seed", rollout=rollout),
            )
        ):
            path = Path(scratch) / f"{number}.json"
            path.write_text(json.dumps(manifest))
            kubectl("apply", "-f", str(path))
    args = controller_args(namespace, ari.http_port)
    return lambda: certkeeper_controller(kubeconfig, tmp_path / "controller.log", *args), "web"


def rollout_state(client: Client, namespace: str, name: str) -> tuple[Secret | None, str | None]:
    secret = get_secret(client, namespace, name)
    annotations = (secret.metadata.annotations if secret and secret.metadata else None) or {}
    return secret, annotations.get("certkeeper.io/rollout")


def rolled_out(client: Client, namespace: str, name: str) -> Secret | None:
    """The Secret once its first reconcile finished (stored, and its rollout recorded)."""
    secret, state = rollout_state(client, namespace, name)
    return secret if state == "done" else None


@pytest.mark.parametrize("mode", ["run", "controller"])
def test_garbage_in_tls_keys_beside_a_good_proxycert_is_repaired_without_an_order(
    mode: str, kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    # The controller did not repair before the two modes shared one sequence: it kept a Secret whose
    # tls.crt was garbage as long as proxycert was good, so an Ingress reading tls.* stayed broken.
    start, name = start_mode(mode, namespace, kubeconfig, kubectl, ari, tmp_path)
    with start() as proc:
        good = wait_for("the certificate stored", lambda: rolled_out(kube_client, namespace, name), 90, proc)
        orders = len(ari.recorded_orders())
        garbage = base64.b64encode(b"-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n").decode()
        patch = {"data": {"tls.crt": garbage, "tls.key": base64.b64encode(b"not a key").decode()}}
        kube_client.patch(Secret, name, patch, namespace=namespace, patch_type=PatchType.MERGE)

        def repaired() -> bool:
            now = get_secret(kube_client, namespace, name)
            return now is not None and secret_bytes(now, "tls.crt") == secret_bytes(good, "proxycert")

        wait_for("tls.crt repaired", repaired, timeout=30, run=proc)
        after = get_secret(kube_client, namespace, name)
        assert after is not None and after.data == good.data
        assert len(ari.recorded_orders()) == orders, "a new certificate was ordered for a repairable Secret"
        notes = wait_for(
            "a Repaired Event",
            lambda: [e.message or "" for e in kube_client.list(Event, namespace=namespace) if e.reason == "Repaired"],
            run=proc,
        )
        assert any("tls.crt, tls.key did not hold" in note for note in notes), notes
        assert "tls.crt, tls.key did not hold" in proc.log
        assert proc.stop() == 0
    assert "PRIVATE KEY" not in proc.log


def restarted_at(kubectl: Kubectl, name: str) -> str | None:
    result = kubectl("get", "deployment", name, "-o", "json", check=False)
    if result.returncode != 0:
        return None
    template = json.loads(result.stdout)["spec"]["template"]
    return ((template.get("metadata") or {}).get("annotations") or {}).get("kubectl.kubernetes.io/restartedAt")


@pytest.mark.parametrize("mode", ["run", "controller"])
def test_a_failed_rollout_is_retried_with_backoff_until_it_is_done(
    mode: str, kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    # The controller used to try a failed rollout again only at the next check (hours later): the
    # certificate was stored, but what reads it kept the old one. Both modes now retry it within seconds.
    start, name = start_mode(mode, namespace, kubeconfig, kubectl, ari, tmp_path, deployment="web")
    before = len(ari.recorded_orders())
    with start() as proc:
        wait_for("the rollout failed", lambda: "the rollout is tried again at" in proc.log, 90, proc)
        assert rollout_state(kube_client, namespace, name)[1] == "pending"
        kubectl("create", "deployment", "web", "--image=nginx")
        wait_for("the Deployment restarted", lambda: restarted_at(kubectl, "web"), timeout=60, run=proc)
        wait_for("the rollout recorded", lambda: rolled_out(kube_client, namespace, name), timeout=30, run=proc)
        assert len(ari.recorded_orders()) == before + 1, "the retried rollout ordered again"
        assert proc.stop() == 0
