"""Gateway API benchmark (issue 13): N HTTPS listeners until every Certificate is Ready, two HTTP-01 paths.

Starts the test bench's control plane (with certkeeper's CRDs and the bench's Gateway API CRDs) and a
Pebble behind the ACME front. For each size N (``--sizes``) and each way of answering HTTP-01, in a
namespace of its own, with the controller already running and synced:

- ``service``: the CA reaches the controller's responder directly (``http01: {}``, the Service route);
- ``httproute``: ``http01.gatewayHTTPRoute``; the CA reaches the responder only through
  ``testbench.gateway.FakeGateway``, which routes by the HTTPRoutes the API server holds (one list per
  request: its own cost is in the figure, a real data plane's programming delay is not);

N listeners (one hostname and Secret each; 63 per Gateway with its HTTP listener, as upstream allows 64) are created in
Gateways annotated ``certkeeper.io/issuer``, and the wall time from the first create until all N
Certificates are Ready is taken, with the orders placed and the HTTPRoutes left afterwards. Results go
to bench/out/gateway.json; a table is printed.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from clusterbench import OUT, ROOT, control_plane, header, kubectl
from lightkube import Client
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Namespace

from certkeeper.kube.reconcile import CertificateResource
from testbench import cluster as bench
from testbench.gateway import FakeGateway, HTTPRouteResource, serving
from testbench.pebble import free_port

CERTKEEPER = str(Path(sys.executable).with_name("certkeeper"))
PER_GATEWAY = 63  # 64 listeners at most (upstream and the bench CRD), one of them HTTP


def issuer_body(namespace: str, front: Any, via_route: bool) -> dict[str, Any]:
    http01: dict[str, Any] = {"gatewayHTTPRoute": {"parentRefs": [{"name": "edge-0", "sectionName": "http"}]}}
    return {
        "apiVersion": "certkeeper.io/v1",
        "kind": "Issuer",
        "metadata": {"name": "pebble", "namespace": namespace},
        "spec": {
            "acme": {
                "server": front.directory_url,
                "privateKeySecretRef": {"name": "pebble-account"},
                "caBundle": base64.b64encode(front.ca_bundle.read_bytes()).decode(),
                "solvers": [{"http01": http01 if via_route else {}}],
            }
        },
    }


def gateway_bodies(namespace: str, size: int) -> list[dict[str, Any]]:
    bodies = []
    for start in range(0, size, PER_GATEWAY):
        listeners: list[dict[str, Any]] = [
            {"name": "http", "protocol": "HTTP", "port": 80, "allowedRoutes": {"namespaces": {"from": "Same"}}}
        ]
        for number in range(start, min(size, start + PER_GATEWAY)):
            listeners.append(
                {
                    "name": f"l{number}",
                    "protocol": "HTTPS",
                    "port": 443,
                    "hostname": f"l{number}.gw.example.com",
                    "tls": {"certificateRefs": [{"kind": "Secret", "name": f"l{number}-tls"}]},
                }
            )
        bodies.append(
            {
                "apiVersion": "gateway.networking.k8s.io/v1",
                "kind": "Gateway",
                "metadata": {
                    "name": f"edge-{start // PER_GATEWAY}",
                    "namespace": namespace,
                    "annotations": {"certkeeper.io/issuer": "pebble"},
                },
                "spec": {"gatewayClassName": "bench", "listeners": listeners},
            }
        )
    return bodies


def ready_count(client: Client, namespace: str) -> int:
    count = 0
    for cert in client.list(CertificateResource, namespace=namespace):
        status = cert.get("status") or {}
        generation = cert.metadata.generation if cert.metadata is not None else None
        for found in status.get("conditions") or ():
            if found.get("type") == "Ready" and found.get("status") == "True":
                count += found.get("observedGeneration") == generation
    return count


def one_run(
    cluster: bench.Cluster, client: Client, front: Any, size: int, via_route: bool, work: Path
) -> dict[str, Any]:
    mode = "httproute" if via_route else "service"
    namespace = f"bench-gw-{mode}-{size}"
    client.create(Namespace(metadata=ObjectMeta(name=namespace)))
    kubectl(cluster, "apply", "-f", "-", stdin=json.dumps(issuer_body(namespace, front, via_route)))
    port = free_port() if via_route else front.http_port
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTKEEPER_")}
    env["KUBECONFIG"] = str(cluster.kubeconfig)
    args = [f"--namespace={namespace}", f"--watch-namespace={namespace}", f"--http-bind=127.0.0.1:{port}"]
    log = work / f"controller-{mode}-{size}.log"
    fake = FakeGateway(client, namespace, "edge-0", "http", 80, {(namespace, "certkeeper-controller", 80):
                       f"127.0.0.1:{port}"})  # fmt: skip
    orders_before = len(front.recorded_orders())
    with log.open("ab") as out:
        proc = subprocess.Popen([CERTKEEPER, "controller", *args], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while "caches synced" not in log.read_text(errors="replace"):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"the controller did not start: see {log}")
            time.sleep(0.1)
        cpu_before = psutil.Process(proc.pid).cpu_times()
        with serving(fake, front.http_port) if via_route else _nothing():
            started = time.monotonic()
            kubectl(cluster, "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List",
                    "items": gateway_bodies(namespace, size)}))  # fmt: skip
            deadline = time.monotonic() + 60 + size * 2
            while ready_count(client, namespace) < size:
                if time.monotonic() > deadline:
                    raise SystemExit(f"{size} listeners ({mode}) not all Ready in time: see {log}")
                time.sleep(0.2)
            ready_s = time.monotonic() - started
            cpu_after = psutil.Process(proc.pid).cpu_times()
            time.sleep(1.0)  # cleanups of the last challenges
            left = len(list(client.list(HTTPRouteResource, namespace=namespace)))
    finally:
        proc.terminate()
        proc.wait(30)
    text = log.read_text(errors="replace")
    result = {
        "mode": mode,
        "listeners": size,
        "gateways": len(gateway_bodies(namespace, size)),
        "all_ready_s": round(ready_s, 2),
        "orders": len(front.recorded_orders()) - orders_before,
        "routes_created": text.count("created HTTPRoute"),
        "routes_left": left,
        "routed_requests": len(fake.routed),
        "controller_cpu_s": round((cpu_after.user + cpu_after.system) - (cpu_before.user + cpu_before.system), 2),
    }
    print(json.dumps(result), flush=True)
    return result


class _nothing:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1,10,100", help="comma-separated numbers of listeners")
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    OUT.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = header(runs=[])
    gateway_crds = ("gateways.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io")
    gateway_api = (ROOT / "testbench" / "crds" / "gateway-api.yaml",)
    with control_plane("bench-gateway-", gateway_api, gateway_crds) as (work, cluster, client, front):
        for size in sizes:
            for via_route in (False, True):
                results["runs"].append(one_run(cluster, client, front, size, via_route, work))
    results["load_at_end"] = os.getloadavg()
    (OUT / "gateway.json").write_text(json.dumps(results, indent=1) + "\n")
    print(f"{'mode':>10} {'N':>5} {'all Ready':>10} {'orders':>7} {'routes made':>12} {'left':>5} {'CPU':>6}")
    for row in results["runs"]:
        print(f"{row['mode']:>10} {row['listeners']:>5} {row['all_ready_s']:>9.2f}s {row['orders']:>7} "
              f"{row['routes_created']:>12} {row['routes_left']:>5} {row['controller_cpu_s']:>5.1f}s")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
