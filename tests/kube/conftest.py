"""Fixtures for tests against a real Kubernetes control plane (``testbench.cluster``).

- ``cluster`` (session): the running ``Cluster``: ``.server``, ``.kubeconfig``, ``.ca_file``,
  ``.admin_token``, ``.kubectl``, ``.node_name``, ``.workdir`` (logs in ``workdir/logs``).
- ``kubeconfig`` (session): Path of the admin kubeconfig.
- ``kube_client`` (session): an admin ``lightkube.Client``.
- ``kube_async_client``: an admin ``lightkube.AsyncClient`` for ``@pytest.mark.anyio`` tests.
- ``namespace``: a fresh namespace name, ready for pods (its default ServiceAccount has a token); deleted
  after the test.
- ``crds`` (session): certkeeper's CRDs from ``deploy/crds`` installed and established.
- ``kubectl``: runs the cluster's kubectl as admin, in ``namespace``; returns the CompletedProcess.
- ``wait_until(what, predicate, timeout=60)``: poll until ``predicate()`` is truthy, else fail
  naming ``what``.
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Protocol, TypeVar

import pytest
from lightkube import AsyncClient, Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, ServiceAccount

from testbench import cluster as bench

T = TypeVar("T")


class Kubectl(Protocol):
    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]: ...


def poll_until(what: str, predicate: Callable[[], T | None], timeout: float = 60.0) -> T:
    """Poll ``predicate`` until it returns something truthy; fail the test naming ``what`` if never."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not reached after {timeout:.0f} s")
        time.sleep(0.1)


class WaitUntil(Protocol):
    def __call__(self, what: str, predicate: Callable[[], T | None], timeout: float = 60.0) -> T: ...


@pytest.fixture(scope="session")
def wait_until() -> WaitUntil:
    return poll_until


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bench.Cluster]:
    # A no-op once cached; `make test` builds first, so only a bare `pytest` on a fresh machine waits.
    bench.build()
    with bench.running(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.fixture(scope="session")
def kubeconfig(cluster: bench.Cluster) -> Path:
    return cluster.kubeconfig


@pytest.fixture(scope="session")
def kube_client(kubeconfig: Path) -> Iterator[Client]:
    client = Client(KubeConfig.from_file(kubeconfig), field_manager="certkeeper-tests")
    yield client
    client.close()


@pytest.fixture
async def kube_async_client(kubeconfig: Path) -> AsyncIterator[AsyncClient]:
    client = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager="certkeeper-tests")
    yield client
    await client.close()


@pytest.fixture
def namespace(kube_client: Client) -> Iterator[str]:
    created = kube_client.create(Namespace(metadata=ObjectMeta(generateName="test-")))
    assert created.metadata is not None and created.metadata.name is not None
    name = created.metadata.name

    def default_account_has_token() -> bool:
        try:
            account = kube_client.get(ServiceAccount, "default", namespace=name)
        except ApiError as exc:
            if exc.status.code == 404:
                return False
            raise
        return bool(account.secrets)

    # The ServiceAccount admission plugin refuses pods until the namespace's default account has a token.
    poll_until(f"default ServiceAccount token in {name}", default_account_has_token)
    yield name
    kube_client.delete(Namespace, name)


@pytest.fixture(scope="session")
def crds(cluster: bench.Cluster) -> None:
    """certkeeper's CRDs (deploy/crds) installed and established."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    crd_dir = Path(__file__).resolve().parents[2] / "deploy" / "crds"
    subprocess.run([str(cluster.kubectl), "apply", "-k", str(crd_dir)], env=env, check=True, capture_output=True)
    for name in ("certificates", "issuers", "clusterissuers"):
        subprocess.run(
            [str(cluster.kubectl), "wait", "--for=condition=Established", "--timeout=60s", f"crd/{name}.certkeeper.io"],
            env=env,
            check=True,
            capture_output=True,
        )


@pytest.fixture
def kubectl(cluster: bench.Cluster, namespace: str) -> Kubectl:
    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
        result = subprocess.run(
            [str(cluster.kubectl), f"--namespace={namespace}", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        if check and result.returncode != 0:
            pytest.fail(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    return run
