"""What the cluster benchmarks share: the machine's line, kubectl, and a control plane with certkeeper's
CRDs beside a Pebble behind the ACME front (which counts orders)."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import psutil
from lightkube import Client, KubeConfig

from testbench import cluster as bench
from testbench.ari import start_front
from testbench.pebble import start_pebble

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
CERTKEEPER_CRDS = ("certificates.certkeeper.io", "issuers.certkeeper.io", "clusterissuers.certkeeper.io")


def header(**extra: Any) -> dict[str, Any]:
    """The first fields of a result: when, on what, how loaded the machine was."""
    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{os.cpu_count()} CPUs, {psutil.virtual_memory().total / 2**30:.0f} GiB, {platform.platform()}",
        "load_at_start": os.getloadavg(),
        **extra,
    }


def kubectl(cluster: bench.Cluster, *args: str, stdin: str | None = None) -> None:
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    done = subprocess.run([str(cluster.kubectl), *args], env=env, input=stdin, text=True, capture_output=True)
    if done.returncode != 0:
        raise SystemExit(f"kubectl {' '.join(args)}: {done.stderr.strip()}")


@contextmanager
def control_plane(
    prefix: str, manifests: tuple[Path, ...] = (), crds: tuple[str, ...] = ()
) -> Iterator[tuple[Path, bench.Cluster, Client, Any]]:
    """(work directory, cluster, client, ACME front): certkeeper's CRDs plus ``manifests`` applied and
    established. The work directory is kept afterwards: the controller logs are the first thing to read
    when a figure looks wrong."""
    work = Path(tempfile.mkdtemp(prefix=prefix))
    print(f"work directory (controller logs): {work}", flush=True)
    pebble = start_pebble(work / "pebble", env={"PEBBLE_WFE_NONCEREJECT": "0"})
    front = start_front(pebble)
    try:
        with bench.running(work / "kube") as cluster:
            kubectl(cluster, "apply", "-k", str(ROOT / "deploy" / "crds"))
            for manifest in manifests:
                kubectl(cluster, "apply", "-f", str(manifest))
            for name in (*CERTKEEPER_CRDS, *crds):
                kubectl(cluster, "wait", "--for=condition=Established", f"crd/{name}")
            yield work, cluster, Client(KubeConfig.from_file(cluster.kubeconfig), field_manager="bench"), front
    finally:
        front.stop()
        pebble.stop()
