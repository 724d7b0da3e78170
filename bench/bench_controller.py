"""``certkeeper controller`` benchmark (issue 8): many Certificates to Ready, restart cost, memory, idle traffic.

Starts the test bench's control plane and a Pebble behind the ACME front (which counts the orders the
CA created). For each size N (``--sizes``), in a namespace of its own:

1. the controller is started, N Certificates are created at once (8 client threads) and the wall time
   from the first create to all N Ready (for their generation) is taken;
2. the controller is stopped and started again: the time it logs for looking at every Certificate once,
   and the orders placed meanwhile (should be 0), are taken;
3. after it settles, its RSS (psutil) and the API requests its caches make while idle for ``--idle-s``
   (from its ``/statusz``) are read.

Then ``--unrelated`` Secrets of 256 KiB that certkeeper does not label are added to the last namespace
and the RSS read again. Results go to bench/out/controller.json; a table is printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
from clusterbench import OUT, control_plane, header, kubectl
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace, Secret

from certkeeper.kube.reconcile import CertificateResource
from testbench import cluster as bench
from testbench.pki import TestCA

CERTKEEPER = str(Path(sys.executable).with_name("certkeeper"))


CONCURRENCY = 16
LATENCY_ROUNDS = 9  # new Certificates created one at a time, each waited for


def start_controller(cluster: bench.Cluster, namespace: str, port: int, log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTKEEPER_")}
    env["KUBECONFIG"] = str(cluster.kubeconfig)
    env["CERTKEEPER_CONCURRENCY"] = str(CONCURRENCY)
    args = [f"--namespace={namespace}", f"--watch-namespace={namespace}", f"--http-bind=127.0.0.1:{port}"]
    with log.open("ab") as out:
        return subprocess.Popen([CERTKEEPER, "controller", *args], env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    proc.wait(30)


def statusz(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/statusz", timeout=5) as answer:
        found: dict[str, Any] = json.loads(answer.read())
        return found


def certificate_body(name: str, namespace: str) -> Any:
    """A Certificate for one name of its own, from the namespace's Issuer ``pebble``."""
    return CertificateResource(
        metadata=ObjectMeta(name=name, namespace=namespace),
        spec={
            "secretName": name,
            "dnsNames": [f"{name}.{namespace}.example.com"],
            "issuerRef": {"name": "pebble", "kind": "Issuer"},
        },
    )


def is_ready(cert: Any) -> bool:
    status = cert.status if isinstance(cert.status, dict) else {}
    return any(
        c.get("type") == "Ready"
        and c.get("status") == "True"
        and c.get("observedGeneration") == cert.metadata.generation
        for c in status.get("conditions") or ()
    )


class ReadyWatch:
    """Which Certificates of a namespace are Ready, from one watch (polling lists of 10,000 objects would
    load the API server more than the controller does)."""

    def __init__(self, client: Client, namespace: str) -> None:
        self.ready: dict[str, bool] = {}
        self.client = client
        self.namespace = namespace
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        version = None
        while True:
            try:
                for kind, cert in self.client.watch(
                    CertificateResource, namespace=self.namespace, resource_version=version, server_timeout=120
                ):
                    version = cert.metadata.resourceVersion
                    self.ready[cert.metadata.name] = kind != "DELETED" and is_ready(cert)
            except Exception:  # the watch ended or the API blinked: resume from the last version
                time.sleep(0.5)

    def count(self) -> int:
        return sum(self.ready.values())


def wait_log(log: Path, pattern: str, timeout: float) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = re.search(pattern, log.read_text(errors="replace"))
        if found:
            return found
        time.sleep(0.2)
    raise RuntimeError(f"{pattern!r} not in {log} after {timeout:.0f} s")


def api_requests(cluster: bench.Cluster) -> dict[str, int]:
    """The API server's request counts so far, by verb, resource and subresource (watches left out)."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    text = subprocess.run([str(cluster.kubectl), "get", "--raw", "/metrics"], env=env, capture_output=True,
                          text=True, check=True).stdout  # fmt: skip
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if not line.startswith("apiserver_request_total{"):
            continue
        labels = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
        if labels.get("verb") in ("WATCH", "LIST") or not labels.get("resource"):
            continue
        key = " ".join(x for x in (labels["verb"], labels["resource"], labels.get("subresource", "")) if x)
        counts[key] = counts.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def cpu_by_process() -> dict[str, float]:
    """CPU seconds so far of every process on the machine, by name (the bench itself as "bench")."""
    totals: dict[str, float] = {}
    for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        times = process.info["cpu_times"]
        if times is None:
            continue
        cmdline = " ".join(process.info["cmdline"] or [])
        name = "bench" if process.pid == os.getpid() else "certkeeper" if "certkeeper controller" in cmdline else \
            process.info["name"]  # fmt: skip
        totals[name] = totals.get(name, 0.0) + times.user + times.system
    return totals


def acme_requests(port: int) -> dict[str, int]:
    """The controller's ACME requests so far, by endpoint and method (its /metrics)."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    counts: dict[str, int] = {}
    for line in text.splitlines():
        if line.startswith("certkeeper_acme_client_request_duration_seconds_count{"):
            labels = dict(re.findall(r'(\w+)="([^"]*)"', line.partition("}")[0]))
            key = f"{labels.get('method', '?')} {labels.get('endpoint', '?')}"
            counts[key] = counts.get(key, 0) + int(float(line.rsplit(" ", 1)[1]))
    return counts


def rss_mb(proc: subprocess.Popen[bytes]) -> float:
    return float(psutil.Process(proc.pid).memory_info().rss) / 2**20


def one_size(
    cluster: bench.Cluster, client: Client, front: Any, size: int, idle_s: float, work: Path
) -> tuple[dict[str, Any], subprocess.Popen[bytes], str]:
    namespace = f"bench-{size}"
    client.create(Namespace(metadata=ObjectMeta(name=namespace)))
    time.sleep(1.0)  # the namespace's ServiceAccount controller settles
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(issuer_body(namespace, front)))
    log = work / f"controller-{size}.log"
    watch = ReadyWatch(client, namespace)
    proc = start_controller(cluster, namespace, front.http_port, log)
    wait_log(log, "leads", 60)
    orders_before = len(front.recorded_orders())
    requests_before = api_requests(cluster)
    cpu_before = cpu_by_process()

    def create(number: int) -> None:
        name = f"c{number:05d}"
        client.create(certificate_body(name, namespace))

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(size)))
    created_s = time.monotonic() - started
    while watch.count() < size:
        if proc.poll() is not None:
            raise RuntimeError(f"the controller exited; see {log}")
        time.sleep(0.5)
    ready_s = time.monotonic() - started
    cpu = psutil.Process(proc.pid).cpu_times()
    orders = len(front.recorded_orders()) - orders_before
    requests_after = api_requests(cluster)
    cpu_after = cpu_by_process()
    acme = acme_requests(front.http_port)
    cpu_window = {k: round(v - cpu_before.get(k, 0.0), 1) for k, v in cpu_after.items()}
    # Every client's requests (the bench's creates and watches' relists too), per Certificate made Ready.
    per_certificate = {k: round((v - requests_before.get(k, 0)) / size, 2) for k, v in requests_after.items()
                       if v - requests_before.get(k, 0) >= size / 10}  # fmt: skip
    latencies = []
    for number in range(LATENCY_ROUNDS):
        name = f"one{number:02d}"
        started = time.monotonic()
        client.create(certificate_body(name, namespace))
        while not watch.ready.get(name):
            time.sleep(0.01)
        latencies.append(time.monotonic() - started)
    stop(proc)

    restart_log = work / f"controller-{size}-restart.log"
    started = time.monotonic()
    proc = start_controller(cluster, namespace, front.http_port, restart_log)
    done = wait_log(
        restart_log, r"looked at once since leading, in ([\d.]+) s \((\d+) full checks, (\d+) orders\)", 120
    )
    restart_wall_s = time.monotonic() - started
    time.sleep(3.0)
    rss = rss_mb(proc)
    before = statusz(front.http_port)
    idle_cpu_before = psutil.Process(proc.pid).cpu_times()
    time.sleep(idle_s)
    idle_cpu_after = psutil.Process(proc.pid).cpu_times()
    after = statusz(front.http_port)
    result = {
        "certificates": size,
        "create_s": round(created_s, 2),
        "all_ready_s": round(ready_s, 2),
        "controller_cpu_s": round(cpu.user + cpu.system, 1),
        "controller_cpu_system_s": round(cpu.system, 1),
        "concurrency": CONCURRENCY,
        "orders": orders,
        "one_at_a_time_ready_median_s": round(statistics.median(latencies), 3) if latencies else None,
        "one_at_a_time_ready_max_s": round(max(latencies), 3) if latencies else None,
        "restart_pass_s": float(done.group(1)),
        "restart_process_start_to_pass_s": round(restart_wall_s, 2),
        "restart_full_checks": int(done.group(2)),
        "restart_orders": int(done.group(3)),
        "rss_mb": round(rss, 1),
        "idle_s": idle_s,
        "idle_api_requests": after["watch_requests"] - before["watch_requests"],
        "idle_reconciles": after["processed"] - before["processed"],
        "idle_cpu_percent": round(100 * (sum(idle_cpu_after[:2]) - sum(idle_cpu_before[:2])) / idle_s, 2),
        # Everything's CPU while they were made Ready: the bench's (its ACME front relays every request
        # to Pebble) and the control plane's are on the same two cores as certkeeper's.
        "cpu_s_while_issuing": dict(sorted(((k, v) for k, v in cpu_window.items() if v >= 0.5), key=lambda kv: -kv[1])),
        "acme_requests_per_certificate": {k: round(v / size, 2) for k, v in sorted(acme.items())},
        "api_requests_per_certificate": round(sum(per_certificate.values()), 1),
        "api_requests_per_certificate_by_kind": dict(sorted(per_certificate.items(), key=lambda kv: -kv[1])),
    }
    print(json.dumps(result), flush=True)
    return result, proc, namespace


def adopt(cluster: bench.Cluster, client: Client, front: Any, size: int, work: Path) -> dict[str, Any]:
    """N Certificates whose Secrets already hold valid certificates (from a throw-away CA, as if issued
    before certkeeper): the first pass adopts them, a restart trusts them; neither may order."""
    namespace = f"adopt-{size}"
    client.create(Namespace(metadata=ObjectMeta(name=namespace)))
    time.sleep(1.0)
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(issuer_body(namespace, front)))
    ca = TestCA("bench CA", days=90)

    def create(number: int) -> None:
        name = f"a{number:05d}"
        issued = ca.issue([f"{name}.{namespace}.example.com"])
        data = {
            "tls.crt": base64.b64encode(issued.cert_pem + ca.cert_pem).decode(),
            "tls.key": base64.b64encode(issued.key_pem).decode(),
        }
        client.create(Secret(metadata=ObjectMeta(name=name, namespace=namespace), type="kubernetes.io/tls", data=data))
        client.create(certificate_body(name, namespace))

    started = time.monotonic()
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(size)))
    created_s = time.monotonic() - started
    orders_before = len(front.recorded_orders())
    watch = ReadyWatch(client, namespace)
    log = work / f"adopt-{size}.log"
    started = time.monotonic()
    proc = start_controller(cluster, namespace, front.http_port, log)
    while watch.count() < size:
        if proc.poll() is not None:
            raise RuntimeError(f"the controller exited; see {log}")
        time.sleep(1.0)
    adopted_s = time.monotonic() - started
    first_rss = rss_mb(proc)
    stop(proc)
    restart_log = work / f"adopt-{size}-restart.log"
    started = time.monotonic()
    proc = start_controller(cluster, namespace, front.http_port, restart_log)
    pattern = r"looked at once since leading, in ([\d.]+) s \((\d+) full checks, (\d+) orders\)"
    done = wait_log(restart_log, pattern, 300)
    restart_s = time.monotonic() - started
    time.sleep(3.0)
    result = {
        "adopted_certificates": size,
        "create_s": round(created_s, 1),
        "first_pass_all_ready_s": round(adopted_s, 1),
        "first_pass_rss_mb": round(first_rss, 1),
        "restart_process_start_to_pass_s": round(restart_s, 1),
        "restart_full_checks": int(done.group(2)),
        "rss_mb": round(rss_mb(proc), 1),
        "orders": len(front.recorded_orders()) - orders_before,
    }
    stop(proc)
    print(json.dumps(result), flush=True)
    return result


def issuer_body(namespace: str, front: Any) -> dict[str, Any]:
    return {
        "apiVersion": "certkeeper.io/v1",
        "kind": "Issuer",
        "metadata": {"name": "pebble", "namespace": namespace},
        "spec": {
            "acme": {
                "server": front.directory_url,
                "privateKeySecretRef": {"name": "pebble-account"},
                "caBundle": base64.b64encode(front.ca_bundle.read_bytes()).decode(),
            }
        },
    }


def unrelated_secrets(client: Client, namespace: str, count: int, proc: subprocess.Popen[bytes]) -> dict[str, Any]:
    before = rss_mb(proc)
    blob = base64.b64encode(os.urandom(256 * 1024)).decode()

    def create(number: int) -> None:
        client.create(Secret(metadata=ObjectMeta(name=f"unrelated-{number}", namespace=namespace), data={"b": blob}))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(create, range(count)))
    time.sleep(5.0)
    after = rss_mb(proc)
    return {"unrelated_secrets": count, "size_kib": 256, "rss_before_mb": round(before, 1),
            "rss_after_mb": round(after, 1), "rss_increase_mb": round(after - before, 1)}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10,100,1000", help="comma-separated numbers of Certificates")
    parser.add_argument("--idle-s", type=float, default=60.0, help="idle window for counting API requests")
    parser.add_argument("--unrelated", type=int, default=1000, help="unrelated 256 KiB Secrets (0: skip)")
    parser.add_argument("--concurrency", type=int, default=16, help="the controller's --concurrency")
    parser.add_argument("--adopt", type=int, default=0, help="also: N Certificates with valid Secrets made beforehand")
    args = parser.parse_args()
    global CONCURRENCY
    CONCURRENCY = args.concurrency
    sizes = [int(s) for s in args.sizes.split(",") if s]
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = header(concurrency=args.concurrency, sizes=[])
    with control_plane("bench-controller-") as (work, cluster, client, front):
        proc: subprocess.Popen[bytes] | None = None
        namespace = ""
        for size in sizes:
            if proc is not None:
                stop(proc)
            result, proc, namespace = one_size(cluster, client, front, size, args.idle_s, work)
            results["sizes"].append(result)
        if args.unrelated and proc is not None:
            results["unrelated"] = unrelated_secrets(client, namespace, args.unrelated, proc)
            print(json.dumps(results["unrelated"]), flush=True)
        if proc is not None:
            stop(proc)
        if args.adopt:
            results["adopt"] = adopt(cluster, client, front, args.adopt, work)
    results["load_at_end"] = os.getloadavg()
    (OUT / "controller.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"{'N':>6} {'all Ready':>10} {'orders':>7} {'restart pass':>13} {'restart orders':>15} {'RSS MB':>7} "
          f"{'idle req':>9}")  # fmt: skip
    for row in results["sizes"]:
        print(f"{row['certificates']:>6} {row['all_ready_s']:>9.1f}s {row['orders']:>7} "
              f"{row['restart_pass_s']:>12.1f}s {row['restart_orders']:>15} {row['rss_mb']:>7.1f} "
              f"{row['idle_api_requests']:>9}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
