"""``certkeeper run``'s error lines name what to fix in its own terms (the seed's variables)."""

from __future__ import annotations

import base64
import http.server
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from lightkube import Client
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType
from runkit import SECRET, certkeeper_run, get_secret, seed_env, wait_for

from testbench.ari import AcmeFront
from testbench.cluster import Cluster

if TYPE_CHECKING:
    from conftest import Kubectl

ROOT = Path(__file__).resolve().parents[2]


def test_a_url_that_is_no_acme_directory_names_letsencrypt_endpoint(
    namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    url = ari.directory_url.rsplit("/", 1)[0] + "/not-a-directory"
    env = seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=url, RC_NAMES="")
    with certkeeper_run(env, tmp_path / "run.log") as run:
        wait_for("the failure", lambda: "could not get a certificate" in run.log, timeout=30, run=run)
        assert run.stop() == 0
    (line,) = [line for line in run.log.splitlines() if "could not get a certificate" in line]
    assert url in line and "check LETSENCRYPT_ENDPOINT" in line and "--server" not in line, line
    assert "next try -" not in line, line
    assert ari.recorded_accounts() == []


class _BadRequest(http.server.BaseHTTPRequestHandler):
    """A web server that is no CA: every GET answers 400 in plain text."""

    def do_GET(self) -> None:
        body = b"bad request\n"
        self.send_response(400)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def bad_request_url() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _BadRequest)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/api"
    finally:
        server.shutdown()
        server.server_close()


def test_a_url_answering_400_is_no_acme_directory_as_issue_says(
    namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path, bad_request_url: str
) -> None:
    env = seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=bad_request_url, RC_NAMES="")
    with certkeeper_run(env, tmp_path / "run.log") as run:
        wait_for("the failure", lambda: "could not get a certificate" in run.log, timeout=30, run=run)
        assert run.stop() == 0
    (line,) = [line for line in run.log.splitlines() if "could not get a certificate" in line]
    assert f"{bad_request_url} is not an ACME directory (HTTP 400)" in line, line
    assert "check LETSENCRYPT_ENDPOINT" in line and "Response [" not in line and "ClientError" not in line, line


def test_a_start_is_not_an_edit_by_someone_else_but_an_edit_is(
    kube_client: Client, namespace: str, kubeconfig: Path, ari: AcmeFront, tmp_path: Path
) -> None:
    env = seed_env(ari.pebble, namespace, kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url, RC_NAMES="")
    with certkeeper_run(env, tmp_path / "first.log") as run:
        wait_for("the certificate stored", lambda: "stored in Secret" in run.log, timeout=60, run=run)
        time.sleep(1)
        assert run.stop() == 0
    assert "someone else" not in run.log, run.log
    with certkeeper_run(env, tmp_path / "second.log") as run:
        wait_for("the check at start", lambda: "still good until" in run.log, timeout=30, run=run)
        time.sleep(2)  # the watch's first event (the Secret as it is) has arrived by now
        assert "someone else" not in run.log, run.log
        garbage = base64.b64encode(b"not a certificate").decode()
        kube_client.patch(
            Secret, SECRET, {"data": {"tls.crt": garbage}}, namespace=namespace, patch_type=PatchType.MERGE
        )
        wait_for("the edit noticed", lambda: "changed by someone else" in run.log, timeout=30, run=run)
        assert run.stop() == 0
    assert len(ari.recorded_orders()) == 1


# One permission of deploy/certkeeper/rbac.yaml taken away at a time: (what is removed, the line that says so).
LEASE_RULE = """  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "create", "update"]
"""
REMOVED = {
    "secrets patch": (
        ('"create", "update", "patch", "delete"]', '"create", "update", "delete"]'),
        # The renewal state goes with the certificate (no patch); the rollout record is the first patch.
        ("cannot record the rollout", 'add verbs: ["patch"] for resources: ["secrets"]'),
    ),
    "leases": ((LEASE_RULE, ""), ("working without it", "grant leases get/create/update")),
    "secrets watch": (
        ('"get", "list", "watch", "create"', '"get", "list", "create"'),
        ("cannot watch Secret", 'add verbs: ["watch"] for resources: ["secrets"]'),
    ),
}


@pytest.mark.parametrize("removed", sorted(REMOVED))
def test_without_one_permission_the_certificate_is_stored_and_the_missing_one_said_once(
    removed: str,
    kube_client: Client,
    namespace: str,
    kubectl: Kubectl,
    ari: AcmeFront,
    tmp_path: Path,
    cluster: Cluster,
) -> None:
    from test_run import service_account_kubeconfig

    (old, new), (says, names) = REMOVED[removed]
    role = (ROOT / "deploy" / "certkeeper" / "rbac.yaml").read_text()
    assert old in role
    (tmp_path / "rbac.yaml").write_text(role.replace(old, new, 1))
    kubectl("create", "serviceaccount", "certkeeper")
    kubectl("apply", "-f", str(tmp_path / "rbac.yaml"))
    config = service_account_kubeconfig(kube_client, namespace, cluster.server, cluster.ca_file, tmp_path / "sa")
    env = seed_env(ari.pebble, namespace, config, LETSENCRYPT_ENDPOINT=ari.directory_url, RC_NAMES="")
    with certkeeper_run(env, tmp_path / "run.log") as run:
        wait_for("the certificate stored", lambda: "stored in Secret" in run.log, timeout=60, run=run)
        time.sleep(1)
        assert "could not get a certificate" not in run.log, run.log
        lines = [line for line in run.log.splitlines() if says in line]
        assert len(lines) == 1, run.log
        assert "403" in lines[0] and names in lines[0], lines[0]
        if removed == "secrets patch":
            # Without patch the renewal state still survives a restart: it was written with the certificate.
            stored = get_secret(kube_client, namespace)
            assert stored is not None and "certkeeper.io/state" in (
                (stored.metadata.annotations or {}) if stored.metadata else {}
            )
        if removed == "secrets watch":
            # Without the watch, a deleted Secret is still noticed (by a re-read) and issued again.
            kube_client.delete(Secret, SECRET, namespace=namespace)
            wait_for("the deletion noticed", lambda: "deleted (seen on a re-read)" in run.log, timeout=45, run=run)
            wait_for("issued again", lambda: run.log.count("stored in Secret") == 2, timeout=30, run=run)
            assert run.log.count(says) == 1, run.log
        assert run.stop() == 0
    assert get_secret(kube_client, namespace) is not None
    assert len(ari.recorded_orders()) == (2 if removed == "secrets watch" else 1)


def test_a_forbidden_read_at_start_names_the_rule_not_an_unreachable_api(
    kube_client: Client,
    namespace: str,
    kubectl: Kubectl,
    ari: AcmeFront,
    tmp_path: Path,
    cluster: Cluster,
) -> None:
    from test_run import service_account_kubeconfig

    role = (ROOT / "deploy" / "certkeeper" / "rbac.yaml").read_text()
    old = '["get", "list", "watch", "create", "update", "patch", "delete"]'
    assert old in role
    (tmp_path / "rbac.yaml").write_text(
        role.replace(old, '["list", "watch", "create", "update", "patch", "delete"]', 1)
    )
    kubectl("create", "serviceaccount", "certkeeper")
    kubectl("apply", "-f", str(tmp_path / "rbac.yaml"))
    config = service_account_kubeconfig(kube_client, namespace, cluster.server, cluster.ca_file, tmp_path / "sa")
    env = seed_env(ari.pebble, namespace, config, LETSENCRYPT_ENDPOINT=ari.directory_url, RC_NAMES="")
    with certkeeper_run(env, tmp_path / "run.log") as run:
        wait_for("the refusal", lambda: "retrying in" in run.log, timeout=30, run=run)
        assert run.stop() == 0
    line = next(line for line in run.log.splitlines() if "retrying in" in line)
    assert "cannot reach" not in line, line
    assert f"cannot read Secret {namespace}/{SECRET} (403 Forbidden" in line, line
    assert 'add verbs: ["get"] for resources: ["secrets"] (apiGroups: [""])' in line, line
    assert "deploy/certkeeper/rbac.yaml" in line, line
    assert ari.recorded_accounts() == []
