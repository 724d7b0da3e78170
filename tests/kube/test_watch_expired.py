"""A watch resumed after the API server forgot its version (410 Gone): ``certkeeper controller`` and
``certkeeper run`` list again and see what changed meanwhile, with no missed change and no extra order.

How the 410 is made real: CERTKEEPER_WATCH_TIMEOUT=2 makes the API server end every watch cleanly after
2 s, and the process resumes it from the last resourceVersion it saw. The process is frozen (SIGSTOP)
past that end, so the clean end waits in its socket; meanwhile the Secret is deleted and kube-apiserver
restarted: its new watch cache starts at etcd's revision after the deletion. Thawed, the process reads
the clean end, resumes from its old version, and the new API server answers 410 "too old resource
version" (as a second API server replica behind a load balancer would). A private control plane, as the
restart must not disturb the other tests' cluster.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Secret
from private_plane import apply, install_controller_resources, kubectl, ready, running_plane
from runkit import (
    SECRET,
    Run,
    certificate_manifest,
    certkeeper_run,
    controller_args,
    controller_env,
    get_secret,
    seed_env,
    wait_for,
)

from testbench import cluster as bench
from testbench.ari import AcmeFront

WATCH_TIMEOUT = "2"


@pytest.fixture(scope="module")
def private_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[bench.Cluster]:
    yield from running_plane(tmp_path_factory.mktemp("watch410") / "kube")


def expire_watches(cluster: bench.Cluster, run: Run, while_frozen: Any) -> float:
    """Freeze ``run`` past its watches' clean end, do ``while_frozen`` and restart kube-apiserver; thaw it.

    Returns the monotonic time of the thaw.
    """
    os.kill(run.proc.pid, signal.SIGSTOP)
    try:
        time.sleep(int(WATCH_TIMEOUT) + 2)  # the API server ends every watch; the ends wait in the sockets
        while_frozen()
        cluster.restart("kube-apiserver")  # its watch cache starts after what ``while_frozen`` changed
    finally:
        os.kill(run.proc.pid, signal.SIGCONT)
    return time.monotonic()


def test_controller_lists_again_on_410_and_misses_nothing(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    install_controller_resources(cluster, ari)
    apply(cluster, certificate_manifest("kept", ["kept.example.com"]))
    client = Client(KubeConfig.from_file(cluster.kubeconfig), namespace="ctl")
    env = {**controller_env(cluster.kubeconfig), "CERTKEEPER_WATCH_TIMEOUT": WATCH_TIMEOUT}
    # A Lease longer than the freeze: this test is about the watches, not about losing the leadership.
    args = controller_args("ctl", ari.http_port, "--lease-duration=120")
    with certkeeper_run(env, tmp_path / "controller.log", *args, command="controller") as run:
        wait_for("the first Certificate Ready", lambda: ready(cluster, "kept"), timeout=60, run=run)
        first = get_secret(client, "ctl", "kept")
        assert first is not None and len(ari.recorded_orders()) == 1

        def change() -> None:
            client.delete(Secret, "kept", namespace="ctl")  # no watch is open: only a list can show this
            apply(cluster, certificate_manifest("added", ["added.example.com"]))

        thawed = expire_watches(cluster, run, change)

        def restored() -> bool:
            now = get_secret(client, "ctl", "kept")
            return now is not None and now.data != first.data and ready(cluster, "kept")

        wait_for("the deleted Secret issued again", restored, timeout=30, run=run)
        wait_for("the Certificate added meanwhile Ready", lambda: ready(cluster, "added"), timeout=30, run=run)
        print(f"controller: both changes handled {time.monotonic() - thawed:.1f} s after the 410")
        assert "expired (410 Gone): listing again" in run.log
        # One order each: the first issuance, the deleted Secret, the added Certificate. None twice.
        orders = [sorted(i["value"] for i in o.get("identifiers", [])) for o in ari.recorded_orders()]
        assert sorted(orders) == [["added.example.com"], ["kept.example.com"], ["kept.example.com"]], orders
        assert run.stop() == 0
    client.close()


def test_run_lists_again_on_410_and_reissues_a_secret_deleted_meanwhile(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    assert kubectl(cluster, "create", "namespace", "run").returncode == 0
    client = Client(KubeConfig.from_file(cluster.kubeconfig), namespace="run")
    run_env = seed_env(
        ari.pebble, "run", cluster.kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url, RC_NAMES="",
        CERTKEEPER_WATCH_TIMEOUT=WATCH_TIMEOUT,
    )  # fmt: skip
    with certkeeper_run(run_env, tmp_path / "run.log", "--lease-duration=120") as run:
        wait_for("the first certificate stored", lambda: "stored in Secret" in run.log, run=run)
        first = get_secret(client, "run")
        assert first is not None
        time.sleep(1)  # the watch has seen the Secret: it resumes from that version

        thawed = expire_watches(cluster, run, lambda: client.delete(Secret, SECRET, namespace="run"))

        def again() -> bool:
            now = get_secret(client, "run")
            return now is not None and now.data != first.data

        wait_for("the deleted Secret issued again", again, timeout=30, run=run)
        print(f"run: the deleted Secret stored again {time.monotonic() - thawed:.1f} s after the 410")
        assert "expired (410 Gone): listing again" in run.log
        assert len(ari.recorded_orders()) == 2, "one order at start, one for the deleted Secret"
        assert len(ari.recorded_accounts()) == 1
        assert run.stop() == 0
    client.close()
