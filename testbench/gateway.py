"""A small, faithful stand-in for a Gateway API implementation's data plane, for HTTP-01 tests.

No Gateway implementation (Envoy Gateway, Istio, ...) can run on the bench, so this plays one Gateway's
HTTP listener: for each request it reads the HTTPRoutes from the API server (no cache, so a deleted
route stops routing at once) and forwards the request to a route's backend only when the route
attaches to this listener the way the Gateway API says (a parentRef naming the Gateway, its namespace
defaulting to the route's, and sectionName/port if given; the listener's ``allowedRoutes`` namespaces:
Same by default, or All) and a rule's path match fits (Exact or PathPrefix). Backend Services are
mapped to loopback addresses by the test (there is no kube-proxy). Anything else is a 404, as from a
Gateway with no route for the path. Like a real implementation it also reports on each route that
names its Gateway: ``status.parents[].conditions`` Accepted True, or False with reason
``NotAllowedByListeners`` / ``NoMatchingParent``, a few times a second.
"""

from __future__ import annotations

import datetime
import http.server
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.types import PatchType

GatewayResource = create_namespaced_resource("gateway.networking.k8s.io", "v1", "Gateway", "gateways")
HTTPRouteResource = create_namespaced_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
CONTROLLER_NAME = "bench.example/fake-gateway"


@dataclass
class FakeGateway:
    client: Client
    namespace: str
    name: str
    listener: str  # the HTTP listener's name
    port: int  # the listener's port in the Gateway's spec
    backends: dict[tuple[str, str, int], str]  # (namespace, Service, port) -> "127.0.0.1:PORT"
    routed: list[str] = field(default_factory=list)  # paths forwarded through a route
    asked: list[str] = field(default_factory=list)  # every challenge path asked for, routed or not
    hold: threading.Event = field(default_factory=threading.Event)  # cleared: challenge requests wait

    def __post_init__(self) -> None:
        self.hold.set()

    def _listeners(self) -> list[dict[str, Any]]:
        gateway = self.client.get(GatewayResource, self.name, namespace=self.namespace)
        listeners: list[dict[str, Any]] = gateway["spec"]["listeners"]
        return listeners

    def _allowed(self, route_namespace: str, listeners: list[dict[str, Any]]) -> bool:
        for listener in listeners:
            if listener["name"] == self.listener:
                allowed = ((listener.get("allowedRoutes") or {}).get("namespaces") or {}).get("from") or "Same"
                return allowed == "All" or (allowed == "Same" and route_namespace == self.namespace)
        return False

    def _verdict(self, route: Any, listeners: list[dict[str, Any]]) -> tuple[dict[str, Any], str] | None:
        """(the parentRef naming this Gateway, "" if attached or the reason it is not), or None if none names it."""
        namespace = str(route["metadata"]["namespace"])
        found = None
        for parent in route["spec"].get("parentRefs") or ():
            if (parent.get("kind") or "Gateway") != "Gateway" or parent.get("name") != self.name:
                continue
            if (parent.get("namespace") or namespace) != self.namespace:
                continue
            if parent.get("sectionName") not in (None, self.listener) or parent.get("port") not in (None, self.port):
                found = found or (parent, "NoMatchingParent")
                continue
            return (parent, "") if self._allowed(namespace, listeners) else (parent, "NotAllowedByListeners")
        return found

    def _attached(self, route: Any, listeners: list[dict[str, Any]]) -> bool:
        verdict = self._verdict(route, listeners)
        return verdict is not None and not verdict[1]

    def report_status(self) -> None:
        """Write Accepted on every route naming this Gateway whose status does not say it yet."""
        listeners = self._listeners()  # read once a pass, as a controller's cache would hold it
        for route in self.client.list(HTTPRouteResource, namespace="*"):
            verdict = self._verdict(route, listeners)
            if verdict is None:
                continue
            parent, reason = verdict
            status = "False" if reason else "True"
            current = [
                c
                for p in (route.get("status") or {}).get("parents") or ()
                for c in p.get("conditions") or ()
                if p.get("controllerName") == CONTROLLER_NAME and c.get("type") == "Accepted"
            ]
            if current and current[0].get("status") == status:
                continue
            now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            condition = {
                "type": "Accepted",
                "status": status,
                "reason": reason or "Accepted",
                "message": f"listener {self.listener} does not allow routes from namespace "
                f"{route['metadata']['namespace']}"
                if reason == "NotAllowedByListeners"
                else "",
                "lastTransitionTime": now,
                "observedGeneration": route["metadata"].get("generation", 1),
            }
            body = {"status": {"parents": [{"parentRef": parent, "controllerName": CONTROLLER_NAME,
                                            "conditions": [condition]}]}}  # fmt: skip
            try:
                self.client.patch(
                    HTTPRouteResource.Status,
                    route["metadata"]["name"],
                    body,
                    namespace=route["metadata"]["namespace"],
                    patch_type=PatchType.MERGE,
                )
            except Exception:  # deleted meanwhile: the next pass sees the list as it is
                continue

    def backend_for(self, host: str, path: str) -> str | None:
        listeners = self._listeners()
        for route in self.client.list(HTTPRouteResource, namespace="*"):
            hostnames = route["spec"].get("hostnames") or ()
            if (hostnames and host not in hostnames) or not self._attached(route, listeners):
                continue
            for rule in route["spec"].get("rules") or ():
                for match in rule.get("matches") or ({"path": {"type": "PathPrefix", "value": "/"}},):
                    wanted = match.get("path") or {"type": "PathPrefix", "value": "/"}
                    exact = wanted.get("type", "PathPrefix") == "Exact"
                    value = wanted.get("value", "/")
                    if path == value or (not exact and path.startswith(value.rstrip("/") + "/")):
                        ref = (rule.get("backendRefs") or [{}])[0]
                        namespace = str(ref.get("namespace") or route["metadata"]["namespace"])
                        return self.backends.get((namespace, str(ref.get("name")), int(ref.get("port") or 0)))
        return None

    def handle(self, host: str, path: str) -> tuple[int, bytes]:
        if path.startswith("/.well-known/acme-challenge/"):
            self.asked.append(path)
            self.hold.wait(60)
        backend = self.backend_for(host.split(":")[0], path)
        if backend is None:
            return 404, b"no route\n"
        self.routed.append(path)
        try:
            with urllib.request.urlopen(f"http://{backend}{path}", timeout=10) as answer:
                return answer.status, answer.read()
        except urllib.error.HTTPError as error:
            return error.code, error.read()


@contextmanager
def serving(gateway: FakeGateway, bind_port: int) -> Iterator[FakeGateway]:
    """The Gateway's HTTP listener on 127.0.0.1:bind_port (where the CA validates HTTP-01)."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, body = gateway.handle(self.headers.get("Host", ""), self.path)
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = http.server.ThreadingHTTPServer(("127.0.0.1", bind_port), Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    stop = threading.Event()

    def report() -> None:
        while not stop.wait(0.1):
            try:
                gateway.report_status()
            except Exception:  # the API server going away at the end of a test
                continue

    reporter = threading.Thread(target=report, daemon=True)
    reporter.start()
    try:
        yield gateway
    finally:
        stop.set()
        reporter.join(10)
        gateway.hold.set()
        server.shutdown()
        server.server_close()
