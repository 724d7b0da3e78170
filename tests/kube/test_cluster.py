"""The test bench's control plane behaves like a cluster where it matters to certkeeper: controllers
keep pods Ready, rollouts finish, and tokens plus RBAC decide who may do what.

These check the bench, not certkeeper (marked ``bench_check``): they say the other Kubernetes
tests run against something real. ``pytest -m "not bench_check"`` leaves them out."""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import pytest
from lightkube import AsyncClient, Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import Deployment, ReplicaSet
from lightkube.resources.core_v1 import (
    ConfigMap,
    Namespace,
    Node,
    Pod,
    ReplicationController,
    Secret,
    ServiceAccount,
)
from lightkube.resources.rbac_authorization_v1 import Role, RoleBinding

from testbench import cluster as bench

if TYPE_CHECKING:
    from conftest import Kubectl, WaitUntil

pytestmark = pytest.mark.bench_check

R = TypeVar("R")
ROOT = Path(__file__).resolve().parents[2]


def build(kind: type[R], data: dict[str, Any]) -> R:
    return cast(R, kind.from_dict(data))  # type: ignore[attr-defined]


def pod_template(app: str) -> dict[str, Any]:
    return {
        "metadata": {"labels": {"app": app}},
        "spec": {"containers": [{"name": "web", "image": "nginx:1.25"}]},
    }


def is_ready(pod: Pod) -> bool:
    if pod.metadata is None or pod.metadata.deletionTimestamp is not None or pod.status is None:
        return False
    conditions = pod.status.conditions or []
    return pod.status.phase == "Running" and any(c.type == "Ready" and c.status == "True" for c in conditions)


def ready_pods(client: Client, namespace: str, app: str) -> list[Pod]:
    return [p for p in client.list(Pod, namespace=namespace, labels={"app": app}) if is_ready(p)]


def make_rc(client: Client, namespace: str, name: str, replicas: int) -> None:
    client.create(
        build(
            ReplicationController,
            {
                "metadata": {"name": name},
                "spec": {"replicas": replicas, "selector": {"app": name}, "template": pod_template(name)},
            },
        ),
        namespace=namespace,
    )


def test_rc_with_two_replicas_gets_two_ready_pods(
    kube_client: Client, namespace: str, cluster: bench.Cluster, wait_until: WaitUntil
) -> None:
    make_rc(kube_client, namespace, "web", 2)

    def two_ready() -> list[Pod] | None:
        found = ready_pods(kube_client, namespace, "web")
        return found if len(found) == 2 else None

    pods = wait_until("2 Ready pods", two_ready)
    assert len({p.status.podIP for p in pods if p.status}) == 2, "each pod has its own IP"
    for pod in pods:
        assert pod.spec is not None and pod.spec.nodeName == cluster.node_name
        assert pod.status is not None and pod.status.podIP
        owners = pod.metadata.ownerReferences if pod.metadata else None
        assert owners and owners[0].kind == "ReplicationController" and owners[0].name == "web"

    def rc_reports_ready() -> bool:
        status = kube_client.get(ReplicationController, "web", namespace=namespace).status
        return status is not None and status.readyReplicas == 2

    wait_until("the RC to report 2 ready replicas", rc_reports_ready)


def test_deleted_pod_is_replaced_by_a_ready_one(kube_client: Client, namespace: str, wait_until: WaitUntil) -> None:
    make_rc(kube_client, namespace, "web", 2)
    wait_until("2 Ready pods", lambda: len(ready_pods(kube_client, namespace, "web")) == 2)
    victim = ready_pods(kube_client, namespace, "web")[0]
    assert victim.metadata is not None and victim.metadata.name is not None
    gone = victim.metadata.name

    # An ordinary delete (default grace period), as certkeeper's rollout does it.
    kube_client.delete(Pod, gone, namespace=namespace)

    def replaced() -> list[str] | None:
        names = [p.metadata.name for p in ready_pods(kube_client, namespace, "web") if p.metadata]
        return [n for n in names if n is not None] if len(names) == 2 and gone not in names else None

    names = wait_until("a Ready replacement for the deleted pod", replaced)
    assert gone not in names
    with pytest.raises(ApiError) as missing:
        kube_client.get(Pod, gone, namespace=namespace)
    assert missing.value.status.code == 404


def test_deployment_restart_rollout_completes(kube_client: Client, namespace: str, wait_until: WaitUntil) -> None:
    kube_client.create(
        build(
            Deployment,
            {
                "metadata": {"name": "api"},
                "spec": {
                    "replicas": 2,
                    "selector": {"matchLabels": {"app": "api"}},
                    "template": pod_template("api"),
                },
            },
        ),
        namespace=namespace,
    )

    def rolled_out() -> bool:
        deployment = kube_client.get(Deployment, "api", namespace=namespace)
        status, meta = deployment.status, deployment.metadata
        if status is None or meta is None:
            return False
        return (
            (status.observedGeneration or 0) >= (meta.generation or 0)
            and status.replicas == 2
            and status.updatedReplicas == 2
            and status.availableReplicas == 2
        )

    wait_until("the first rollout", rolled_out)
    before = {p.metadata.name for p in ready_pods(kube_client, namespace, "api") if p.metadata}

    stamp = "2026-01-01T00:00:00Z"
    kube_client.patch(
        Deployment,
        "api",
        {"spec": {"template": {"metadata": {"annotations": {"kubectl.kubernetes.io/restartedAt": stamp}}}}},
        namespace=namespace,
    )

    def restarted() -> bool:
        pods = kube_client.list(Pod, namespace=namespace, labels={"app": "api"})
        return rolled_out() and all(
            p.metadata is not None
            and p.metadata.name not in before
            and (p.metadata.annotations or {}).get("kubectl.kubernetes.io/restartedAt") == stamp
            for p in pods
        )

    wait_until("the restart rollout to replace every pod", restarted)
    assert len(ready_pods(kube_client, namespace, "api")) == 2
    replica_sets = kube_client.list(ReplicaSet, namespace=namespace, labels={"app": "api"})
    replicas = sorted((rs.spec.replicas or 0) if rs.spec else 0 for rs in replica_sets)
    assert replicas == [0, 2], "the old ReplicaSet is scaled down, the new one holds both pods"


def account_token(client: Client, namespace: str, account: str, wait_until: WaitUntil) -> str:
    def secret_name() -> str | None:
        found = client.get(ServiceAccount, account, namespace=namespace).secrets
        return found[0].name if found else None

    name = wait_until(f"a token Secret for {account}", secret_name)
    secret = client.get(Secret, name, namespace=namespace)
    assert secret.data is not None
    return base64.b64decode(secret.data["token"]).decode()


def client_with_token(cluster: bench.Cluster, tmp_path: Path, token: str) -> Client:
    path = tmp_path / "token.kubeconfig"
    bench.write_kubeconfig(path, cluster.server, cluster.ca_file, "token-user", token)
    return Client(KubeConfig.from_file(path))


def test_service_account_token_is_refused_until_a_role_allows_it(
    kube_client: Client, namespace: str, cluster: bench.Cluster, tmp_path: Path, wait_until: WaitUntil
) -> None:
    kube_client.create(build(ServiceAccount, {"metadata": {"name": "bare"}}), namespace=namespace)
    token = account_token(kube_client, namespace, "bare", wait_until)
    as_account = client_with_token(cluster, tmp_path, token)

    with pytest.raises(ApiError) as refused:
        list(as_account.list(ConfigMap, namespace=namespace))
    assert refused.value.status.code == 403

    kube_client.create(
        build(
            Role,
            {
                "metadata": {"name": "read-configmaps"},
                "rules": [{"apiGroups": [""], "resources": ["configmaps"], "verbs": ["get", "list"]}],
            },
        ),
        namespace=namespace,
    )
    kube_client.create(
        build(
            RoleBinding,
            {
                "metadata": {"name": "bare-reads-configmaps"},
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "Role",
                    "name": "read-configmaps",
                },
                "subjects": [{"kind": "ServiceAccount", "name": "bare", "namespace": namespace}],
            },
        ),
        namespace=namespace,
    )

    def allowed() -> bool:
        try:
            list(as_account.list(ConfigMap, namespace=namespace))
        except ApiError as exc:
            if exc.status.code == 403:
                return False
            raise
        return True

    wait_until("the RoleBinding to take effect", allowed)
    # The role grants this namespace only.
    with pytest.raises(ApiError) as elsewhere:
        list(as_account.list(ConfigMap, namespace="kube-system"))
    assert elsewhere.value.status.code == 403


@pytest.mark.anyio
async def test_async_client_sees_the_test_namespace(kube_async_client: AsyncClient, namespace: str) -> None:
    names = [ns.metadata.name async for ns in kube_async_client.list(Namespace) if ns.metadata]
    assert namespace in names


def test_unknown_token_is_unauthenticated(cluster: bench.Cluster, tmp_path: Path) -> None:
    stranger = client_with_token(cluster, tmp_path, "not-a-token-the-cluster-issued")
    with pytest.raises(ApiError) as refused:
        list(stranger.list(Node))
    assert refused.value.status.code == 401


def test_kubectl_applies_a_kustomization(kubectl: Kubectl, kube_client: Client, namespace: str, tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text("resources:\n- settings.yaml\n")
    (tmp_path / "settings.yaml").write_text(
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  colour: blue\n"
    )

    kubectl("apply", "-k", str(tmp_path))

    applied = kube_client.get(ConfigMap, "settings", namespace=namespace)
    assert applied.data == {"colour": "blue"}
    nodes = json.loads(kubectl("get", "nodes", "-o", "json").stdout)["items"]
    assert [n["metadata"]["name"] for n in nodes] == [bench.NODE_NAME]


@pytest.mark.slow
def test_script_starts_and_stops_a_separate_cluster(tmp_path: Path) -> None:
    script = ROOT / "scripts" / "test-cluster"
    up = subprocess.run([script, "up", str(tmp_path)], capture_output=True, text=True, timeout=180, check=False)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"KUBECONFIG={tmp_path.resolve() / 'kubeconfig'}"
        processes = json.loads((tmp_path / "processes.json").read_text())
        assert {p["name"] for p in processes} == {
            "etcd",
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubelet",
        }
        client = Client(KubeConfig.from_file(tmp_path / "kubeconfig"))
        assert [n.metadata.name for n in client.list(Node) if n.metadata] == [bench.NODE_NAME]
    finally:
        down = subprocess.run([script, "down", str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert down.returncode == 0, down.stderr
    survivors = [p["name"] for p in processes if bench.is_alive(bench.ProcessRecord(**p))]
    assert survivors == []
