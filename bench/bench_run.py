"""``certkeeper run`` benchmark (issue 3): start-up to Secret written, and idle memory.

Starts the test bench's control plane (``testbench.cluster.running``) and a Pebble, then for
each of ``--rounds`` fresh namespaces starts ``certkeeper run`` with the post's environment and measures
the wall time from process start to the Secret ``certs-<domain>`` existing (seen through a watch).
After the last round the process is left to settle (issuance done, one check logged) and its resident
set size is read with psutil: the idle RSS. Results go to bench/out/run.json; a table is printed.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
from lightkube import Client, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret, ServiceAccount

from testbench import cluster as bench
from testbench.command import CERTKEEPER
from testbench.pebble import Pebble, start_pebble

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
TARGET_STARTUP_S = 3.0
TARGET_IDLE_RSS_MB = 80.0
SETTLE_S = 5.0


def fresh_namespace(client: Client) -> str:
    created = client.create(Namespace(metadata=ObjectMeta(generateName="bench-")))
    assert created.metadata is not None and created.metadata.name is not None
    name = created.metadata.name
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            account = client.get(ServiceAccount, "default", namespace=name)
        except ApiError:
            account = None  # not made yet
        if account is not None and account.secrets:
            return name
        time.sleep(0.1)
    raise RuntimeError(f"namespace {name} got no default ServiceAccount token")


def one_round(client: Client, kubeconfig: Path, pebble: Pebble, log: Path, keep: bool) -> tuple[float, float | None]:
    """Seconds from start to the Secret written, and (if ``keep``) the idle RSS in MB afterwards."""
    namespace = fresh_namespace(client)
    seen = threading.Event()

    def watch() -> None:
        for kind, _ in client.watch(
            Secret, namespace=namespace, fields={"metadata.name": "certs-example.com"}, server_timeout=60
        ):
            if kind == "ADDED":
                seen.set()
                return

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    time.sleep(0.3)  # let the watch start before the process does
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTKEEPER_")}
    env.update(
        EMAIL="admin@example.com",
        DOMAINS="example.com www.example.com",
        RC_NAMES="",
        LETSENCRYPT_ENDPOINT=pebble.directory_url,
        NAMESPACE=namespace,
        CERTKEEPER_CA_BUNDLE=str(pebble.ca_bundle),
        CERTKEEPER_HTTP_BIND=f"127.0.0.1:{pebble.http_port}",
        KUBECONFIG=str(kubeconfig),
    )
    with log.open("ab") as out:
        started = time.monotonic()
        proc = subprocess.Popen([CERTKEEPER, "run"], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        if not seen.wait(60):
            raise RuntimeError(f"no Secret within 60 s; see {log}")
        elapsed = time.monotonic() - started
        rss = None
        if keep:
            time.sleep(SETTLE_S)
            rss = psutil.Process(proc.pid).memory_info().rss / 2**20
        return elapsed, rss
    finally:
        proc.terminate()
        proc.wait(20)
        client.delete(Namespace, namespace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    bench.build()
    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bench-run-") as tmp:
        work = Path(tmp)
        with bench.running(work / "cluster") as cluster:
            pebble = start_pebble(work / "pebble")
            client = Client(KubeConfig.from_file(cluster.kubeconfig))
            try:
                times: list[float] = []
                rss: float | None = None
                for round_number in range(args.rounds):
                    keep = round_number == args.rounds - 1
                    elapsed, measured = one_round(client, cluster.kubeconfig, pebble, work / "run.log", keep)
                    times.append(elapsed)
                    rss = measured if measured is not None else rss
            finally:
                pebble.stop()
                client.close()
    result: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "machine": {
            "cpus": os.cpu_count(),
            "memory_gib": round(psutil.virtual_memory().total / 2**30),
            "system": platform.platform(),
        },
        "startup_to_secret_s": {"median": statistics.median(times), "max": max(times), "all": times},
        "idle_rss_mb": rss,
        "load_average_1min_after": os.getloadavg()[0],
        "targets": {"startup_to_secret_s": TARGET_STARTUP_S, "idle_rss_mb": TARGET_IDLE_RSS_MB},
    }
    (OUT / "run.json").write_text(json.dumps(result, indent=2) + "\n")
    print("| figure | measured | target |")
    print("|---|---|---|")
    print(
        f"| start-up to Secret written (median of {len(times)}) | {statistics.median(times):.2f} s "
        f"(max {max(times):.2f} s) | <= {TARGET_STARTUP_S:.0f} s |"
    )
    print(f"| idle RSS of `certkeeper run` | {rss:.1f} MB | <= {TARGET_IDLE_RSS_MB:.0f} MB |")
    ok = statistics.median(times) <= TARGET_STARTUP_S and rss is not None and rss <= TARGET_IDLE_RSS_MB
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
