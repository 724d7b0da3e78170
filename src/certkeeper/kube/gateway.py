"""Gateway API (``gateway.networking.k8s.io/v1``) Gateways into the Certificates they imply, as plain values.

An annotated Gateway asks for one Certificate per Secret its TLS-terminating listeners name, covering
the hostnames of every listener that names that Secret (cert-manager's gateway-shim does the same, so
a Gateway moves over by changing at most its annotation). Only fields that exist in ``v1`` are read.

A listener that cannot be served is never skipped silently: it becomes a ``problem`` (an Event on the
Gateway), and a Secret whose listeners all lack a hostname still gets its Certificate, marked with
``PROBLEM_ANNOTATION`` so that its Ready condition says what to fix instead of ordering.

ListenerSets (``XListenerSet``, experimental) would add listeners here: ``GatewayObj.listeners`` is the
seam, the mapping below does not care where a listener was declared.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from certkeeper.kube.sources import API_VERSION, SOURCE_PROBLEM

GATEWAY_GROUP = "gateway.networking.k8s.io"
GATEWAY_API_VERSION = f"{GATEWAY_GROUP}/v1"
# Which Issuer: certkeeper's own annotations first, then cert-manager's (a Gateway moves over unchanged).
ISSUER_ANNOTATIONS = (
    ("certkeeper.io/cluster-issuer", "ClusterIssuer"),
    ("certkeeper.io/issuer", "Issuer"),
    ("cert-manager.io/cluster-issuer", "ClusterIssuer"),
    ("cert-manager.io/issuer", "Issuer"),
)
PROBLEM_ANNOTATION = SOURCE_PROBLEM  # on a Certificate no listener gave a name to
TLS_PROTOCOLS = ("HTTPS", "TLS")


@dataclass(frozen=True)
class ListenerObj:
    name: str
    hostname: str  # "" when the listener has none
    protocol: str
    tls_mode: str  # "Terminate" when not given (the v1 default)
    refs: tuple[tuple[str, str, str, str], ...]  # certificateRefs: (group, kind, namespace or "", name)


@dataclass(frozen=True)
class GatewayObj:
    namespace: str
    name: str
    uid: str
    issuer: str  # "Issuer/name" or "ClusterIssuer/name"; "" when not annotated
    listeners: tuple[ListenerObj, ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True)
class GatewayPlan:
    certificates: tuple[dict[str, Any], ...]  # Certificate bodies, owned by the Gateway
    problems: tuple[str, ...]  # one line per listener that cannot be served: what is wrong, how to fix


def annotated_issuer(annotations: dict[str, str]) -> str:
    for annotation, kind in ISSUER_ANNOTATIONS:
        if annotations.get(annotation):
            return f"{kind}/{annotations[annotation]}"
    return ""


def project_listener(raw: dict[str, Any]) -> ListenerObj:
    tls = raw.get("tls") or {}
    refs = tuple(
        (
            str(ref.get("group") or ""),
            str(ref.get("kind") or "Secret"),
            str(ref.get("namespace") or ""),
            str(ref.get("name") or ""),
        )
        for ref in tls.get("certificateRefs") or ()
    )
    return ListenerObj(
        name=str(raw.get("name") or ""),
        hostname=str(raw.get("hostname") or ""),
        protocol=str(raw.get("protocol") or ""),
        tls_mode=str(tls.get("mode") or "Terminate"),
        refs=refs,
    )


def project_gateway(obj: dict[str, Any]) -> GatewayObj:
    meta = obj.get("metadata") or {}
    listeners = tuple(project_listener(raw) for raw in (obj.get("spec") or {}).get("listeners") or ())
    return GatewayObj(
        namespace=str(meta.get("namespace") or ""),
        name=str(meta.get("name") or ""),
        uid=str(meta.get("uid") or ""),
        issuer=annotated_issuer(meta.get("annotations") or {}),
        listeners=listeners,
    )


def _certificate(gateway: GatewayObj, secret_name: str, hosts: list[str], problem: str) -> dict[str, Any]:
    kind, _, issuer_name = gateway.issuer.partition("/")
    metadata: dict[str, Any] = {
        "name": secret_name,
        "namespace": gateway.namespace,
        "labels": {"app.kubernetes.io/managed-by": "certkeeper"},
        "ownerReferences": [
            {
                "apiVersion": GATEWAY_API_VERSION,
                "kind": "Gateway",
                "name": gateway.name,
                "uid": gateway.uid,
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if problem:
        metadata["annotations"] = {PROBLEM_ANNOTATION: problem}
    return {
        "apiVersion": API_VERSION,
        "kind": "Certificate",
        "metadata": metadata,
        "spec": {"secretName": secret_name, "dnsNames": hosts, "issuerRef": {"name": issuer_name, "kind": kind}},
    }


def gateway_plan(gateway: GatewayObj) -> GatewayPlan:
    """The Certificates an annotated Gateway asks for, and the listeners it asks in vain."""
    if not gateway.issuer:
        return GatewayPlan((), ())
    hosts: dict[str, list[str]] = {}  # Secret -> hostnames, in listener order
    nameless: dict[str, list[str]] = {}  # Secret -> listeners that gave it no hostname
    problems: list[str] = []
    for listener in gateway.listeners:
        where = f"listener {listener.name or '?'}"
        if listener.protocol not in TLS_PROTOCOLS:
            continue  # HTTP, TCP, UDP: nothing to certify
        if listener.tls_mode != "Terminate":
            continue  # Passthrough: the backend holds the certificate, the Gateway does not
        secrets: list[str] = []
        for group, kind, namespace, name in listener.refs:
            if group not in ("", "core") or kind != "Secret":
                problems.append(
                    f"{where}: certificateRef {kind} {name} is not a Secret: certkeeper writes Secrets only"
                )
            elif namespace and namespace != gateway.namespace:
                problems.append(
                    f"{where}: Secret {namespace}/{name} is in another namespace: certkeeper writes a Gateway's "
                    f"Secrets in its own namespace ({gateway.namespace}); name one there"
                )
            elif name:
                secrets.append(name)
        if not listener.refs:
            problems.append(f"{where}: {listener.protocol} without tls.certificateRefs: name a Secret to store into")
        for secret in secrets:
            hosts.setdefault(secret, [])
            if not listener.hostname:
                nameless.setdefault(secret, []).append(listener.name or "?")
            elif listener.hostname not in hosts[secret]:
                hosts[secret].append(listener.hostname)
        if secrets and not listener.hostname:
            problems.append(
                f"{where}: no hostname, so no name to put in the certificate for Secret {', '.join(secrets)}: "
                "set listener.hostname"
            )
    certificates = []
    for secret, names in hosts.items():
        problem = ""
        if not names:
            listeners = ", ".join(nameless[secret])
            problem = f"Gateway {gateway.name}: listener {listeners} has no hostname: set listener.hostname"
        certificates.append(_certificate(gateway, secret, names, problem))
    return GatewayPlan(tuple(certificates), tuple(problems))
