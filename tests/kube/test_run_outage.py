"""``certkeeper run`` through an API server restart, on a private control plane (so the restart cannot
disturb the other tests' cluster): a Secret deleted right after the outage is issued again at once."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lightkube import Client, KubeConfig
from lightkube.resources.core_v1 import Event, Secret
from runkit import RC, SECRET, certkeeper_run, get_secret, make_rc, ready_pods, seed_env, wait_for

from testbench import cluster as bench
from testbench.ari import AcmeFront


@pytest.fixture
def private_cluster(tmp_path: Path) -> Iterator[bench.Cluster]:
    bench.build()
    with bench.running(tmp_path / "kube") as running:
        yield running


def test_a_secret_deleted_right_after_an_api_restart_is_issued_again(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    subprocess.run([str(cluster.kubectl), "create", "namespace", "run"], env=env, check=True, capture_output=True)
    client = Client(KubeConfig.from_file(cluster.kubeconfig), namespace="run")
    run_env = seed_env(ari.pebble, "run", cluster.kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url, RC_NAMES="")
    with certkeeper_run(run_env, tmp_path / "run.log") as run:
        wait_for("the first certificate stored", lambda: "stored in Secret" in run.log, run=run)
        first = get_secret(client, "run")
        assert first is not None
        cluster.restart("kube-apiserver", down_s=3.0)
        client.delete(Secret, SECRET, namespace="run")

        def again() -> bool:
            now = get_secret(client, "run")
            return now is not None and now.data != first.data

        wait_for("the deleted Secret issued again", again, timeout=60, run=run)
        assert len(ari.recorded_orders()) == 2, "one order at start, one for the deleted Secret"
        assert len(ari.recorded_accounts()) == 1
        assert run.stop() == 0
    client.close()


def test_an_api_restart_mid_rollout_is_finished_and_the_kubelet_stand_in_survives(
    private_cluster: bench.Cluster, ari: AcmeFront, tmp_path: Path
) -> None:
    cluster = private_cluster
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    subprocess.run([str(cluster.kubectl), "create", "namespace", "run"], env=env, check=True, capture_output=True)
    client = Client(KubeConfig.from_file(cluster.kubeconfig), namespace="run")
    make_rc(client, "run", replicas=2)
    old = wait_for("2 Ready pods", lambda: (p := ready_pods(client, "run")) and len(p) == 2 and p)
    run_env = seed_env(ari.pebble, "run", cluster.kubeconfig, LETSENCRYPT_ENDPOINT=ari.directory_url)
    with certkeeper_run(run_env, tmp_path / "run.log") as run:
        wait_for("the rollout started", lambda: "replacing pod" in run.log, run=run)
        cluster.restart("kube-apiserver", down_s=3.0)

        def finished() -> bool:
            secret = get_secret(client, "run")
            annotations = (secret.metadata.annotations if secret and secret.metadata else None) or {}
            pods = ready_pods(client, "run")
            return annotations.get("certkeeper.io/rollout") == "done" and len(pods) == 2 and not pods & old

        wait_for("the rollout finished after the outage", finished, timeout=90, run=run)

        def created() -> int:
            # kube-controller-manager's Event per pod the RC created: the 2 first ones, then 1 per deletion.
            events = client.list(Event, namespace="run")
            return sum(1 for e in events if e.reason == "SuccessfulCreate" and e.involvedObject.name == RC)

        wait_for("the RC's replacements counted", lambda: created() >= 4, run=run)
        time.sleep(1)
        print(f"pods the RC created: {created()} (2 at start)")
        assert created() == 4, "the resumed rollout replaced a pod it had replaced already"
        kubelet = next(r for r in cluster.processes if r.name == "kubelet")
        os.kill(kubelet.pid, 0)  # the stand-in is still running
        assert len(ari.recorded_orders()) == 1
        assert run.stop() == 0
    client.close()
