"""Gateway API: certificates for a Gateway's listeners, and HTTP-01 through a temporary HTTPRoute.

Real API server (with the bench's minimal Gateway API CRDs, testbench/crds/gateway-api.yaml) and real
Pebble; the Gateway's data plane is ``testbench.gateway.FakeGateway`` (no implementation runs here).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from lightkube import Client
from lightkube.codecs import from_dict
from lightkube.resources.core_v1 import Event
from runkit import (
    certkeeper_controller,
    condition,
    get_secret,
    issuer_manifest,
    wait_for,
)
from test_controller import apply, get, ready, shipped_rbac_kubeconfig, start, verify_secret

from certkeeper.solvers.httproute import ROUTE_LABELS
from testbench import cluster as bench
from testbench.ari import AcmeFront
from testbench.gateway import FakeGateway, HTTPRouteResource, serving
from testbench.pebble import free_port

if TYPE_CHECKING:
    from conftest import Kubectl

ROOT = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.usefixtures("crds", "gateway_crds")


@pytest.fixture(scope="session")
def gateway_crds(cluster: bench.Cluster) -> None:
    """The bench's Gateway API CRDs installed and established."""
    env = {**os.environ, "KUBECONFIG": str(cluster.kubeconfig)}
    crds = ROOT / "testbench" / "crds" / "gateway-api.yaml"
    applied = subprocess.run([str(cluster.kubectl), "apply", "-f", str(crds)], env=env, capture_output=True, text=True)
    assert applied.returncode == 0, applied.stderr
    for plural in ("gateways", "httproutes", "gatewayclasses", "referencegrants"):
        subprocess.run(
            [str(cluster.kubectl), "wait", "--for=condition=Established", "--timeout=60s",
             f"crd/{plural}.gateway.networking.k8s.io"],
            env=env, check=True, capture_output=True,
        )  # fmt: skip


def https(name: str, hostname: str | None, secret: str) -> dict[str, Any]:
    found: dict[str, Any] = {
        "name": name,
        "protocol": "HTTPS",
        "port": 443,
        "tls": {"mode": "Terminate", "certificateRefs": [{"kind": "Secret", "name": secret}]},
    }
    if hostname:
        found["hostname"] = hostname
    return found


def gateway_manifest(
    annotations: dict[str, str], *listeners: dict[str, Any], routes_from: str = "Same"
) -> dict[str, Any]:
    http = {"name": "http", "protocol": "HTTP", "port": 80, "allowedRoutes": {"namespaces": {"from": routes_from}}}
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge", "annotations": annotations},
        "spec": {"gatewayClassName": "bench", "listeners": [http, *listeners]},
    }


def gateway_events(client: Client, namespace: str) -> list[Event]:
    return [e for e in client.list(Event, namespace=namespace) if e.involvedObject.kind == "Gateway"]


def test_a_gateways_listeners_get_certificates_that_follow_it(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    apply(kubectl, issuer_manifest("pebble", ari.directory_url, ari.ca_bundle))
    apply(
        kubectl,
        gateway_manifest(
            {"certkeeper.io/issuer": "pebble"},
            https("shop", "shop.example.com", "shop-tls"),
            https("www", "www.shop.example.com", "shop-tls"),
            https("api", "api.example.com", "api-tls"),
        ),
    )
    root = ari.pebble.root_pem()
    with start(kubeconfig, tmp_path, namespace, ari) as run:
        for secret, names in (("shop-tls", {"shop.example.com", "www.shop.example.com"}), ("api-tls",
                              {"api.example.com"})):  # fmt: skip
            cert = wait_for(f"Certificate {secret} Ready", lambda s=secret: ready(kubectl, s), timeout=60, run=run)
            owner = cert["metadata"]["ownerReferences"][0]
            assert (owner["kind"], owner["name"]) == ("Gateway", "edge")
            stored = get_secret(kube_client, namespace, secret)
            assert stored is not None and stored.type == "kubernetes.io/tls"
            verify_secret(stored, names, root, tmp_path)
        assert len(ari.recorded_orders()) == 2

        # A listener added later: its Secret follows. A listener without a hostname: an Event on the
        # Gateway and a Certificate that says why, and no order.
        gateway = get(kubectl, "gateway.gateway.networking.k8s.io", "edge")
        listeners = gateway["spec"]["listeners"]
        listeners += [https("blog", "blog.example.com", "blog-tls"), https("nameless", None, "nameless-tls")]
        kubectl("patch", "gateway.gateway.networking.k8s.io", "edge", "--type=merge",
                "-p", json.dumps({"spec": {"listeners": listeners}}))  # fmt: skip
        wait_for("Certificate blog-tls Ready", lambda: ready(kubectl, "blog-tls"), timeout=60, run=run)
        blog = get_secret(kube_client, namespace, "blog-tls")
        assert blog is not None
        verify_secret(blog, {"blog.example.com"}, root, tmp_path)

        def refused() -> dict[str, Any] | None:
            found = condition(get(kubectl, "certificate.certkeeper.io", "nameless-tls"))
            return found if found.get("reason") == "ListenerNotServed" else None

        found = wait_for("nameless-tls refused", refused, timeout=30, run=run)
        assert found["status"] == "False" and "listener nameless has no hostname" in found["message"]
        warned = wait_for(
            "a Warning Event on the Gateway",
            lambda: [e for e in gateway_events(kube_client, namespace) if e.reason == "ListenerNotServed"],
            run=run,
        )
        assert warned[0].type == "Warning" and "set listener.hostname" in (warned[0].message or "")
        assert get_secret(kube_client, namespace, "nameless-tls") is None
        assert len(ari.recorded_orders()) == 3, "an order was placed for a listener without a hostname"

        # The Gateway goes: the garbage collector removes its Certificates.
        kubectl("delete", "gateway.gateway.networking.k8s.io", "edge")
        for secret in ("shop-tls", "api-tls", "blog-tls", "nameless-tls"):
            gone = lambda s=secret: not get(kubectl, "certificate.certkeeper.io", s)  # noqa: E731
            wait_for(f"Certificate {secret} garbage-collected", gone, timeout=90, run=run)
        assert run.stop() == 0
    assert "PRIVATE KEY" not in run.log


def routes(kube_client: Client, namespace: str) -> list[str]:
    return [
        str(r.metadata.name)
        for r in kube_client.list(HTTPRouteResource, namespace=namespace)
        if r.metadata is not None and r.metadata.name is not None
    ]


def http_route(name: str, labels: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name, "labels": labels},
        "spec": {"parentRefs": [{"name": "edge"}], "rules": [{"backendRefs": [{"name": "web", "port": 80}]}]},
    }


def test_http01_through_a_temporary_httproute_under_the_shipped_rbac(
    cluster: bench.Cluster, kube_client: Client, namespace: str, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    """The controller runs as its ServiceAccount with deploy/controller/rbac.yaml, in the certkeeper namespace;
    the CA reaches it only through an HTTPRoute on the Gateway, which is gone once the certificate is in."""
    sa_config = shipped_rbac_kubeconfig(cluster, kubectl, tmp_path / "sa-kubeconfig")
    issuer = issuer_manifest("pebble", ari.directory_url, ari.ca_bundle)
    issuer["spec"]["acme"]["solvers"] = [{"http01": {"gatewayHTTPRoute": {"parentRefs": [{"name": "edge",
                                         "sectionName": "http"}]}}}]  # fmt: skip
    apply(
        kubectl,
        issuer,
        gateway_manifest({"cert-manager.io/issuer": "pebble"}, https("shop", "shop.example.com", "shop-tls"),
                         routes_from="All"),
    )  # fmt: skip
    # A route an earlier (killed) run left, and another controller's route: only certkeeper's goes.
    stale = http_route("certkeeper-http01-stale", ROUTE_LABELS)
    foreign = http_route("someone-elses", {"app.kubernetes.io/managed-by": "someone-else"})
    for manifest in (stale, foreign):
        kube_client.create(from_dict(manifest), namespace="certkeeper")
    mine = http_route("in-my-namespace", ROUTE_LABELS)
    kube_client.create(from_dict(mine), namespace=namespace)  # not certkeeper's namespace: left alone

    controller_port = free_port()
    fake = FakeGateway(
        kube_client, namespace, "edge", "http", 80,
        backends={("certkeeper", "certkeeper-controller", 80): f"127.0.0.1:{controller_port}"},
    )  # fmt: skip
    args = [f"--watch-namespace={namespace}", "--namespace=certkeeper", f"--http-bind=127.0.0.1:{controller_port}",
            "--lease-duration=4"]  # fmt: skip
    try:
        with (
            serving(fake, ari.http_port),
            certkeeper_controller(sa_config, tmp_path / "controller.log", *args) as run,
        ):
            wait_for("Certificate shop-tls Ready", lambda: ready(kubectl, "shop-tls"), timeout=60, run=run)
            secret = get_secret(kube_client, namespace, "shop-tls")
            assert secret is not None
            verify_secret(secret, {"shop.example.com"}, ari.pebble.root_pem(), tmp_path)
            assert any(p.startswith("/.well-known/acme-challenge/") for p in fake.routed), "the CA never came through"
            left = routes(kube_client, "certkeeper")
            assert left == ["someone-elses"], left
            assert sorted(routes(kube_client, namespace)) == ["in-my-namespace"]

            # Stopped while the CA waits on the route: SIGTERM deletes it before the process exits.
            fake.hold.clear()
            kubectl("patch", "gateway.gateway.networking.k8s.io", "edge", "--type=json", "-p",
                    json.dumps([{"op": "add", "path": "/spec/listeners/-",
                                 "value": https("late", "late.example.com", "late-tls")}]))  # fmt: skip
            held = wait_for(
                "a challenge route while the CA waits",
                lambda: [r for r in routes(kube_client, "certkeeper") if r.startswith("certkeeper-http01-")],
                timeout=60,
                run=run,
            )
            assert len(held) == 1
            assert run.stop() == 0
            assert routes(kube_client, "certkeeper") == ["someone-elses"]
            assert "deleted 1 HTTPRoute(s) of challenges still in flight" in run.log
            assert "deleted 1 HTTPRoute(s) an earlier run left: certkeeper-http01-stale" in run.log
            assert not re.search(r"\b403\b", run.log) and "Forbidden" not in run.log, run.log
            threading.Thread(target=fake.hold.set, daemon=True).start()
    finally:
        kubectl("delete", "httproute.gateway.networking.k8s.io", "--all", "--namespace=certkeeper", check=False)


def test_a_route_the_gateway_refuses_fails_the_challenge_before_the_ca_is_asked(
    kube_client: Client, namespace: str, kubeconfig: Path, kubectl: Kubectl, ari: AcmeFront, tmp_path: Path
) -> None:
    """The port-80 listener takes routes from its own namespace only; certkeeper's are in another."""
    kubectl("apply", "-f", str(ROOT / "deploy" / "controller" / "namespace.yaml"))
    issuer = issuer_manifest("pebble", ari.directory_url, ari.ca_bundle)
    issuer["spec"]["acme"]["solvers"] = [{"http01": {"gatewayHTTPRoute": {"parentRefs": [{"name": "edge"}]}}}]
    listener = https("shop", "shop.example.com", "shop-tls")
    apply(kubectl, issuer, gateway_manifest({"certkeeper.io/issuer": "pebble"}, listener, routes_from="Same"))
    controller_port = free_port()
    fake = FakeGateway(
        kube_client, namespace, "edge", "http", 80,
        backends={("certkeeper", "certkeeper-controller", 80): f"127.0.0.1:{controller_port}"},
    )  # fmt: skip
    args = [f"--watch-namespace={namespace}", "--namespace=certkeeper", f"--http-bind=127.0.0.1:{controller_port}",
            "--lease-duration=4"]  # fmt: skip
    with serving(fake, ari.http_port), certkeeper_controller(kubeconfig, tmp_path / "controller.log", *args) as run:

        def failed() -> dict[str, Any] | None:
            found = condition(get(kubectl, "certificate.certkeeper.io", "shop-tls"))
            return found if found.get("status") == "False" and found.get("reason") in ("Failed", "BackingOff") else None

        found = wait_for("the Certificate failed", failed, timeout=60, run=run)
        assert "did not accept HTTPRoute" in found["message"] and "NotAllowedByListeners" in found["message"]
        assert "allowedRoutes.namespaces.from: All" in found["message"]
        assert fake.asked == [], "the CA was sent to a route the Gateway refused"
        assert routes(kube_client, "certkeeper") == []
        assert get_secret(kube_client, namespace, "shop-tls") is None
        assert run.stop() == 0
