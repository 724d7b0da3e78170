"""``certkeeper controller`` serves /metrics and the status page: one series set per Certificate, labelled
by the Certificate's own name and its issuerRef, gone when the Certificate is deleted."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
import urllib.error
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from lightkube import Client
from promtext import Samples, parse, promtool_check, value
from runkit import (
    CERTKEEPER,
    certificate_manifest,
    certkeeper_controller,
    controller_args,
    get_secret,
    issuer_manifest,
    secret_bytes,
    wait_for,
)

from certkeeper.crypto import cert_info, split_pem_chain
from testbench.ari import AcmeFront

if TYPE_CHECKING:
    from conftest import Kubectl

pytestmark = pytest.mark.usefixtures("crds")
EXPIRY = "certkeeper_certificate_expiration_timestamp_seconds"


def apply(kubectl: Kubectl, *manifests: dict[str, Any]) -> None:
    with tempfile.TemporaryDirectory() as scratch:
        for number, manifest in enumerate(manifests):
            path = Path(scratch) / f"{number}.json"
            path.write_text(json.dumps(manifest))
            kubectl("apply", "-f", str(path))


def scrape(port: int) -> Samples | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
            text = answer.read().decode()
    except urllib.error.URLError:
        return None
    check = promtool_check(text)
    assert check.returncode == 0, check.stdout + check.stderr
    return parse(text)


def test_controller_metrics_label_certificates_by_their_name_and_drop_deleted_ones(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(kubectl, certificate_manifest("shop", ["shop.example.com"], secretName="shop-tls"))
    me = {"name": "shop", "namespace": namespace, "issuer_name": "pebble"}
    args = controller_args(namespace, ari.http_port)
    with certkeeper_controller(kubeconfig, tmp_path / "controller.log", *args) as run:

        def with_expiry() -> Samples | None:
            samples = scrape(ari.http_port)
            return samples if samples and value(samples, EXPIRY, **me) else None

        samples = wait_for("the Certificate's expiry in /metrics", with_expiry, timeout=90, run=run)
        secret = get_secret(kube_client, namespace, "shop-tls")
        assert secret is not None
        expiry = cert_info(split_pem_chain(secret_bytes(secret, "tls.crt"))[0]).not_after.timestamp()
        assert value(samples, EXPIRY, **me) == expiry
        assert value(samples, EXPIRY, name="shop-tls") is None  # the Secret's name is not the label
        assert value(samples, "certkeeper_certificate_ready_status", condition="True", **me) == 1.0
        assert value(samples, "certkeeper_controller_leader") == 1.0
        assert value(samples, "certkeeper_controller_orders_total") == 1.0
        with urllib.request.urlopen(f"http://127.0.0.1:{ari.http_port}/", timeout=10) as answer:
            page = answer.read().decode()
        assert f"{namespace}/shop" in page and "shop.example.com" in page

        kubectl("delete", "certificate.certkeeper.io", "shop")

        def gone() -> bool:
            samples = scrape(ari.http_port)
            return samples is not None and value(samples, EXPIRY, **me) is None

        wait_for("the deleted Certificate's series gone", gone, run=run)
        assert run.stop() == 0


def test_status_kube_lists_certificates_and_details_one(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(kubectl, certificate_manifest("blog", ["blog.example.com"]))
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTKEEPER_")} | {"KUBECONFIG": str(kubeconfig)}

    def status(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([CERTKEEPER, "status", "--kube", *args], env=env, capture_output=True, text=True,
                              timeout=60)  # fmt: skip

    with certkeeper_controller(kubeconfig, tmp_path / "controller.log", *controller_args(namespace, ari.http_port)):

        def listed() -> dict[str, Any] | None:
            result = status("-n", namespace, "--json")
            assert result.returncode == 0, result.stderr
            rows = json.loads(result.stdout)
            return rows[0] if rows and rows[0]["ready"] == "True" else None

        row = wait_for("the Certificate Ready in status --kube", listed, timeout=90)
    secret = get_secret(kube_client, namespace, "blog")
    assert secret is not None
    not_after = cert_info(split_pem_chain(secret_bytes(secret, "tls.crt"))[0]).not_after
    assert row["name"] == "blog" and row["names"] == ["blog.example.com"] and row["issuer"] == "pebble"
    assert row["not_after"].replace("Z", "+00:00") == not_after.isoformat()
    table = status("-n", namespace)
    assert table.returncode == 0 and "blog" in table.stdout and "True" in table.stdout
    detail = status("-n", namespace, "blog")
    assert detail.returncode == 0, detail.stderr
    assert f"Certificate {namespace}/blog: Ready=True" in detail.stdout
    assert "event " in detail.stdout  # its Events (Issued)
    missing = status("-n", namespace, "nope")
    assert missing.returncode == 2
    assert missing.stderr.strip() == (f"certkeeper: error: no Certificate nope in namespace {namespace}: "
                                      "list them with certkeeper status --kube")  # fmt: skip
