"""``certkeeper run``'s error lines name what to fix in its own terms (the seed's variables)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from lightkube import Client
from runkit import certkeeper_run, get_secret, seed_env, wait_for

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


# One permission of deploy/certkeeper/rbac.yaml taken away at a time: (what is removed, the line that says so).
LEASE_RULE = """  - apiGroups: ["coordination.k8s.io"]
    resources: ["leases"]
    verbs: ["get", "create", "update"]
"""
REMOVED = {
    "secrets patch": (
        ('"create", "update", "patch", "delete"]', '"create", "update", "delete"]'),
        ("kept in memory only", "record the renewal state"),
    ),
    "leases": ((LEASE_RULE, ""), ("working without it", "grant leases get/create/update")),
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
        (line,) = [line for line in run.log.splitlines() if says in line]
        assert "403" in line and names in line, line
        assert run.stop() == 0
    assert get_secret(kube_client, namespace) is not None
    assert len(ari.recorded_orders()) == 1
