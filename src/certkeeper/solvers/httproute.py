"""HTTP-01 through a Gateway: one temporary HTTPRoute per challenge token, to certkeeper's Service.

An Issuer's solver ``http01: {gatewayHTTPRoute: {parentRefs: [...]}}`` (cert-manager's shape) makes,
for each token, an HTTPRoute in the controller's own namespace that sends exactly
``/.well-known/acme-challenge/<token>`` to the controller's Service, attached to the Gateway listeners
``parentRefs`` name. The route is deleted when the challenge is cleaned up (after success and after
failure), when the controller stops, and, for routes a killed leader left, when a replica starts leading.
Every route carries ``ROUTE_LABELS``; certkeeper lists and deletes only routes with those labels, and
only in its own namespace, so another controller's HTTPRoutes are never touched.

The Gateway's HTTP listener must accept routes from the controller's namespace
(``allowedRoutes.namespaces.from: All``, or a Selector matching it); the backend is in the route's own
namespace, so no ReferenceGrant is needed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

from lightkube import Client
from lightkube.generic_resource import create_namespaced_resource
from lightkube.models.meta_v1 import ObjectMeta

from certkeeper.errors import CertkeeperError, ConfigError
from certkeeper.kube.api import KubeApiError, call_api
from certkeeper.solvers.http01 import CHALLENGE_PREFIX, ChallengeStore

log = logging.getLogger("certkeeper.controller")
HTTPRoute = create_namespaced_resource("gateway.networking.k8s.io", "v1", "HTTPRoute", "httproutes")
ROUTE_LABELS = {"app.kubernetes.io/managed-by": "certkeeper", "certkeeper.io/role": "http01-route"}
ROUTE_SELECTOR = ",".join(f"{k}={v}" for k, v in ROUTE_LABELS.items())
PARENT_REF_FIELDS = {"group", "kind", "namespace", "name", "sectionName", "port"}
# How long a route may stay without any word from the Gateway (an implementation that writes no status)
# before the CA is sent to it anyway.
ACCEPT_TIMEOUT_S = 10.0


def route_parents(options: Mapping[str, Any], issuer_namespace: str) -> str:
    """An Issuer's ``http01`` options as the routes' parentRefs (canonical JSON), or the ConfigError saying why not.

    A parentRef without a namespace means the Issuer's (the route itself lives in certkeeper's namespace);
    a ClusterIssuer has none, so it must say.
    """
    extra = sorted(set(options) - {"gatewayHTTPRoute"})
    if extra:
        raise ConfigError(
            f"http01.{extra[0]} is not supported",
            "use http01: {} (route /.well-known/acme-challenge/ to certkeeper's Service) or "
            "http01: {gatewayHTTPRoute: {parentRefs: [...]}}",
        )
    route = options.get("gatewayHTTPRoute") or {}
    if not isinstance(route, Mapping) or set(route) - {"parentRefs", "labels"}:
        raise ConfigError("http01.gatewayHTTPRoute takes parentRefs (and labels)")
    parents = route.get("parentRefs")
    if not isinstance(parents, list) or not parents:
        raise ConfigError(
            "http01.gatewayHTTPRoute.parentRefs is empty",
            "name the Gateway (and its port-80 listener): parentRefs: [{name: GATEWAY, sectionName: http}]",
        )
    normalized = []
    for index, parent in enumerate(parents):
        where = f"http01.gatewayHTTPRoute.parentRefs[{index}]"
        if not isinstance(parent, Mapping) or not parent.get("name"):
            raise ConfigError(f"{where} has no name: name the Gateway")
        unknown = sorted(set(parent) - PARENT_REF_FIELDS)
        if unknown:
            raise ConfigError(f"{where}.{unknown[0]} is not a parentRef field")
        namespace = parent.get("namespace") or issuer_namespace
        if not namespace:
            raise ConfigError(f"{where} has no namespace: a ClusterIssuer must name the Gateway's namespace")
        normalized.append({**parent, "namespace": namespace})
    labels = route.get("labels") or {}
    if not isinstance(labels, Mapping):
        raise ConfigError("http01.gatewayHTTPRoute.labels is not a map of label names to values")
    return json.dumps({"parentRefs": normalized, "labels": dict(labels)}, sort_keys=True, separators=(",", ":"))


def route_name(token: str) -> str:
    # Tokens are base64url (upper case, "_"): not a valid object name. A digest is, and is unique enough.
    return "certkeeper-http01-" + hashlib.sha256(token.encode()).hexdigest()[:20]


class RouteKeeper:
    """Creates and deletes certkeeper's HTTPRoutes in its namespace; knows which it made, to delete them at stop."""

    def __init__(
        self, client: Client, namespace: str, service: str, port: int, accept_timeout: float = ACCEPT_TIMEOUT_S
    ) -> None:
        self.client = client
        self.accept_timeout = accept_timeout
        self.namespace = namespace
        self.service = service
        self.port = port
        self._lock = threading.Lock()
        self._live: set[str] = set()
        self.created = 0
        self.deleted = 0

    def body(self, token: str, parents: str) -> Any:
        config = json.loads(parents)
        return HTTPRoute(
            apiVersion="gateway.networking.k8s.io/v1",
            kind="HTTPRoute",
            metadata=ObjectMeta(
                name=route_name(token), namespace=self.namespace, labels={**config["labels"], **ROUTE_LABELS}
            ),
            spec={
                "parentRefs": config["parentRefs"],
                "rules": [
                    {
                        "matches": [{"path": {"type": "Exact", "value": CHALLENGE_PREFIX + token}}],
                        "backendRefs": [{"name": self.service, "port": self.port}],
                    }
                ],
            },
        )

    def create(self, token: str, parents: str) -> None:
        name = route_name(token)
        with self._lock:
            self._live.add(name)  # before the request: a stop during it still deletes the route
        try:
            call_api(
                f"create HTTPRoute {self.namespace}/{name} for an HTTP-01 challenge",
                lambda: self.client.create(self.body(token, parents)),
            )
        except KubeApiError as error:
            if not error.conflict:  # already there (a retried challenge): it routes the same path
                raise
        with self._lock:
            self.created += 1
        log.info("HTTP-01 through the Gateway: created HTTPRoute %s/%s", self.namespace, name)
        self._wait_accepted(name)

    def _wait_accepted(self, name: str) -> None:
        """Return once a Gateway accepts the route; raise if it refuses it.

        The CA is told to validate only after this: a route the Gateway refuses (say its listener does
        not allow routes from certkeeper's namespace) fails the challenge here, before the CA tries, so
        no failed validation counts against the account. A route with no status at all after
        ``accept_timeout`` (an implementation that writes none) is trusted.
        """
        deadline = time.monotonic() + self.accept_timeout
        delay = 0.05
        while True:
            route = call_api(
                f"read HTTPRoute {self.namespace}/{name}",
                lambda: self.client.get(HTTPRoute, name, namespace=self.namespace),
            )
            refused = ""
            for parent in (route.get("status") or {}).get("parents") or ():
                for found in parent.get("conditions") or ():
                    if found.get("type") != "Accepted":
                        continue
                    if found.get("status") == "True":
                        return
                    if found.get("status") == "False" and found.get("reason") != "Pending":
                        gateway = (parent.get("parentRef") or {}).get("name", "?")
                        refused = f"Gateway {gateway}: {found.get('reason')}: {found.get('message') or ''}".strip()
            if refused:
                self._delete(name)
                raise CertkeeperError(
                    f"the Gateway did not accept HTTPRoute {self.namespace}/{name} for HTTP-01 ({refused})",
                    f"let the parentRefs' listener accept routes from namespace {self.namespace} "
                    "(allowedRoutes.namespaces.from: All, or a Selector), or fix the Issuer's parentRefs",
                )
            if time.monotonic() > deadline:
                log.warning(
                    "HTTPRoute %s/%s: no Gateway reported on it within %.0f s; asking the CA to validate anyway",
                    self.namespace,
                    name,
                    self.accept_timeout,
                )
                return
            time.sleep(delay)
            delay = min(delay * 2, 0.5)

    def _delete(self, name: str) -> None:
        try:
            call_api(
                f"delete HTTPRoute {self.namespace}/{name}",
                lambda: self.client.delete(HTTPRoute, name, namespace=self.namespace),
            )
        except KubeApiError as error:
            if not error.not_found:
                raise
        with self._lock:
            self._live.discard(name)
            self.deleted += 1

    def delete(self, token: str) -> None:
        self._delete(route_name(token))

    def delete_all(self) -> int:
        """The routes this process made and has not deleted yet (at stop)."""
        with self._lock:
            names = sorted(self._live)
        for name in names:
            self._delete(name)
        return len(names)

    def delete_leftovers(self) -> int:
        """Routes with certkeeper's labels in its namespace that this process did not make (a killed leader's)."""
        found = call_api(
            f"list certkeeper's HTTPRoutes in {self.namespace}",
            lambda: list(self.client.list(HTTPRoute, namespace=self.namespace, labels=dict(ROUTE_LABELS))),
        )
        names = []
        for route in found:
            name = str((route.metadata.name if route.metadata is not None else "") or "")
            with self._lock:
                mine = name in self._live
            if name and not mine:
                self._delete(name)
                names.append(name)
        if names:
            log.info("deleted %d HTTPRoute(s) an earlier run left: %s", len(names), ", ".join(names))
        return len(names)


class RouteChallenges(ChallengeStore):
    """The shared token store (so certkeeper's responder answers) plus one HTTPRoute per token to reach it."""

    def __init__(self, base: ChallengeStore, keeper: RouteKeeper, parents: str) -> None:
        super().__init__()
        self.base = base
        self.keeper = keeper
        self.parents = parents

    def put(self, token: str, key_authorization: str) -> None:
        self.base.put(token, key_authorization)  # answerable before the route can send the CA to it
        self.keeper.create(token, self.parents)

    def remove(self, token: str) -> None:
        try:
            self.keeper.delete(token)
        finally:
            self.base.remove(token)

    def get(self, token: str) -> str | None:
        return self.base.get(token)

    def __len__(self) -> int:
        return len(self.base)
