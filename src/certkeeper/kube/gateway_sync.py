"""The Gateway source on the controller: watch Gateways, keep the Certificates they imply in step.

Certificates are created, updated and deleted here (the API server's garbage collector removes them
with their Gateway); problems with listeners become Warning Events on the Gateway, once per change.
The Gateway API is optional: when its group is not served, the controller runs without this source.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

import httpx2
from lightkube import Client

from certkeeper.kube.api import check_response
from certkeeper.kube.events import Recorder
from certkeeper.kube.gateway import GATEWAY_API_VERSION, PROBLEM_ANNOTATION, GatewayObj, gateway_plan, project_gateway
from certkeeper.kube.sources import API_VERSION, CertificateObj
from certkeeper.kube.watch import Informer

log = logging.getLogger("certkeeper.controller")
GATEWAY_PREFIX = "gateway:"
SYNCED_FIELDS = ("secretName", "dnsNames", "issuerRef")


async def gateway_api_served(http: httpx2.AsyncClient) -> bool:
    """Whether the cluster serves gateway.networking.k8s.io/v1 (its CRDs are installed)."""
    try:
        response = await http.get(f"/apis/{GATEWAY_API_VERSION}")
    except (httpx2.HTTPError, OSError) as error:
        log.warning("cannot tell whether the Gateway API is served (%s): Gateways are not watched", error)
        return False
    return response.status_code == 200


class GatewaySource:
    def __init__(
        self,
        http: httpx2.AsyncClient,
        client: Client,
        certificates: Callable[[], dict[str, CertificateObj]],
        on_change: Callable[[str], None],
        scope: str,
    ) -> None:
        self.http = http
        self.client = client
        self.certificates = certificates
        self.informer: Informer[GatewayObj] = Informer(
            http, "Gateways", f"/apis/{GATEWAY_API_VERSION}{scope}/gateways", project_gateway, self._changed
        )
        self._on_change = on_change
        self._reported: dict[str, tuple[str, ...]] = {}  # Gateway -> problems last reported in Events

    def _changed(self, key: str, old: GatewayObj | None, new: GatewayObj | None) -> None:
        if new is None:
            self._reported.pop(key, None)
        elif new.issuer or (old is not None and old.issuer):
            self._on_change(GATEWAY_PREFIX + key)

    def keys(self) -> list[str]:
        return [GATEWAY_PREFIX + key for key, gateway in self.informer.cache.items() if gateway.issuer]

    def _event(self, gateway: GatewayObj, reason: str, message: str, warning: bool) -> None:
        Recorder(self.client, gateway.namespace).emit(
            "Gateway", gateway.name, reason, message, warning=warning, api_version=GATEWAY_API_VERSION, uid=gateway.uid
        )

    async def sync(self, key: str) -> None:
        """Create, update or delete the Certificates an annotated Gateway implies; report what it cannot get."""
        gateway = self.informer.cache.get(key)
        if gateway is None:
            return  # deleted: the garbage collector removes the Certificates it owned
        plan = gateway_plan(gateway)
        problems = list(plan.problems)
        wanted = {body["metadata"]["name"]: body for body in plan.certificates}
        base = f"/apis/{API_VERSION}/namespaces/{gateway.namespace}/certificates"
        certificates = self.certificates()
        for name, body in wanted.items():
            existing = certificates.get(f"{gateway.namespace}/{name}")
            if existing is None:
                response = await self.http.post(base, json=body)
                if response.status_code != 409:
                    check_response(f"create Certificate {gateway.namespace}/{name}", response)
                    log.info("Gateway %s: created Certificate %s", key, name)
                continue
            if gateway.uid not in existing.owner_uids:
                problems.append(
                    f"Certificate {name} (for Secret {name}) exists and is not this Gateway's: left alone; "
                    "name another Secret in the listener or delete that Certificate"
                )
                continue
            problem = (body["metadata"].get("annotations") or {}).get(PROBLEM_ANNOTATION, "")
            if any(existing.spec.get(f) != body["spec"][f] for f in SYNCED_FIELDS) or existing.problem != problem:
                patch = {"metadata": {"annotations": {PROBLEM_ANNOTATION: problem or None}}}
                response = await self.http.patch(
                    f"{base}/{name}",
                    json={**patch, "spec": body["spec"]},
                    headers={"Content-Type": "application/merge-patch+json"},
                )
                check_response(f"update Certificate {gateway.namespace}/{name}", response)
                log.info("Gateway %s: updated Certificate %s", key, name)
        for cert in list(certificates.values()):
            if cert.namespace == gateway.namespace and gateway.uid in cert.owner_uids and cert.name not in wanted:
                response = await self.http.delete(f"{base}/{cert.name}")
                if response.status_code != 404:
                    check_response(f"delete Certificate {cert.key}", response)
                    log.info("Gateway %s: deleted Certificate %s (no listener names its Secret)", key, cert.name)
        reported = tuple(problems)
        if reported != self._reported.get(key, ()):
            self._reported[key] = reported
            for problem in reported:
                log.warning("Gateway %s: %s", key, problem)
                await asyncio.to_thread(self._event, gateway, "ListenerNotServed", problem, True)
