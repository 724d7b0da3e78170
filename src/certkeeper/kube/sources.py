"""What the cluster asks for, as plain values: Certificates and Issuers read into targets, Ingresses
into the Certificates they imply.

The watch caches keep only these projections. Turning one into a ``Target`` checks everything that can
be checked without the network, and a problem becomes a ``Refusal`` (a condition reason and a message
that says what to fix), never an order.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from certkeeper.errors import ConfigError
from certkeeper.kube.secret_store import data_digest
from certkeeper.spec import CertSpec, KeyType, ip_of, normalize_names

if TYPE_CHECKING:
    from certkeeper.kube.config import RunConfig

GROUP = "certkeeper.io"
VERSION = "v1"
API_VERSION = f"{GROUP}/{VERSION}"
CERTIFICATE_REF = "certkeeper.io/certificate"  # annotation on a Secret: the Certificate that writes it
# On a Certificate a source (a Gateway) made although it could give it no name: why, and what to fix.
SOURCE_PROBLEM = "certkeeper.io/listener-problem"

# Fields of a Certificate's spec certkeeper reads. Any other field (a cert-manager field we do not
# support, or a typo) is refused by name rather than ignored.
KNOWN_CERT_FIELDS: dict[str, Any] = {
    "secretName": None,
    "dnsNames": None,
    "ipAddresses": None,
    "issuerRef": {"name": None, "kind": None, "group": None},
    "privateKey": {"algorithm": None, "size": None, "rotationPolicy": None},
    "renewBefore": None,
    "profile": None,
    "secretTemplate": {"labels": None, "annotations": None},
    "keys": None,
    "rollout": None,
}
KNOWN_ISSUER_FIELDS: dict[str, Any] = {
    "acme": {
        "server": None,
        "email": None,
        "privateKeySecretRef": {"name": None, "key": None},
        "profile": None,
        "preferredChain": None,
        "caBundle": None,
        "externalAccountBinding": {"keyID": None, "keySecretRef": {"name": None, "key": None}},
        "solvers": None,
        "fallback": None,  # each item checked by certkeeper.kube.fallback_cas
        "rehearsal": {"server": None, "caBundle": None},  # a staging order first (certkeeper.kube.rehearsals)
    }
}
ROLLOUT_KINDS = {
    "replicationcontroller": "ReplicationController",
    "rc": "ReplicationController",
    "deployment": "Deployment",
    "deploy": "Deployment",
    "statefulset": "StatefulSet",
    "sts": "StatefulSet",
    "daemonset": "DaemonSet",
    "ds": "DaemonSet",
}
_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|m|s)")


# -- projections: what the caches hold ---------------------------------------------------------


@dataclass(frozen=True)
class CertificateObj:
    namespace: str
    name: str
    uid: str
    generation: int
    spec_json: str  # canonical JSON: compact, comparable, parsed only when reconciling
    status_json: str
    owner_uids: tuple[str, ...]  # controller owners (an Ingress)
    problem: str = ""  # SOURCE_PROBLEM: refused with this message

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    @property
    def spec(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.spec_json)
        return value

    @property
    def status(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.status_json)
        return value


@dataclass(frozen=True)
class IssuerObj:
    kind: str  # Issuer or ClusterIssuer
    namespace: str  # "" for a ClusterIssuer
    name: str
    generation: int
    spec_json: str
    status_json: str

    @property
    def ref(self) -> str:
        return issuer_ref(self.kind, self.namespace, self.name)


@dataclass(frozen=True)
class SecretObj:
    """A Secret certkeeper labelled: which Certificate it serves and what certificate it holds."""

    namespace: str
    name: str
    certificate: str  # the annotation CERTIFICATE_REF, "" if none
    fingerprint: str  # certkeeper.io/fingerprint as last written
    digest: str  # of tls.crt/proxycert as it is now: an edit by someone else changes it
    written: str  # the digest certkeeper recorded when it wrote the data (certkeeper.io/data-digest)
    tokens: tuple[tuple[str, str], ...] = ()  # the shared HTTP-01 Secret only
    rolling: bool = False  # certkeeper.io/rollout is "pending": its consumers are not all restarted yet


@dataclass(frozen=True)
class IngressObj:
    namespace: str
    name: str
    uid: str
    issuer: str  # "Issuer/name" or "ClusterIssuer/name"; "" when not annotated for certkeeper
    tls: tuple[tuple[str, tuple[str, ...]], ...]  # (secretName, hosts)


def _canonical(value: Any) -> str:
    return json.dumps(value or {}, sort_keys=True, separators=(",", ":"))


def _meta(obj: dict[str, Any]) -> dict[str, Any]:
    meta: dict[str, Any] = obj.get("metadata") or {}
    return meta


def project_certificate(obj: dict[str, Any]) -> CertificateObj:
    meta = _meta(obj)
    owners = tuple(o.get("uid", "") for o in meta.get("ownerReferences") or () if o.get("controller"))
    return CertificateObj(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        uid=meta.get("uid", ""),
        generation=int(meta.get("generation") or 0),
        spec_json=_canonical(obj.get("spec")),
        status_json=_canonical(obj.get("status")),
        owner_uids=owners,
        problem=str((meta.get("annotations") or {}).get(SOURCE_PROBLEM) or ""),
    )


def project_issuer(kind: str) -> Any:
    def project(obj: dict[str, Any]) -> IssuerObj:
        meta = _meta(obj)
        return IssuerObj(
            kind=kind,
            namespace=meta.get("namespace", "") if kind == "Issuer" else "",
            name=meta.get("name", ""),
            generation=int(meta.get("generation") or 0),
            spec_json=_canonical(obj.get("spec")),
            status_json=_canonical(obj.get("status")),
        )

    return project


def project_secret(obj: dict[str, Any]) -> SecretObj:
    meta = _meta(obj)
    annotations = meta.get("annotations") or {}
    data = obj.get("data") or {}
    held = data.get("tls.crt") or data.get("proxycert") or ""
    tokens: tuple[tuple[str, str], ...] = ()
    if annotations.get("certkeeper.io/role") == "http01":
        tokens = tuple(sorted((k, _unb64(v)) for k, v in data.items()))
    return SecretObj(
        namespace=meta.get("namespace", ""),
        name=meta.get("name", ""),
        certificate=annotations.get(CERTIFICATE_REF, ""),
        fingerprint=annotations.get("certkeeper.io/fingerprint", ""),
        digest=data_digest(held),
        written=annotations.get("certkeeper.io/data-digest", ""),
        tokens=tokens,
        rolling=annotations.get("certkeeper.io/rollout") == "pending",
    )


def _unb64(text: str) -> str:
    try:
        return base64.b64decode(text).decode()
    except (binascii.Error, ValueError):
        return ""


def project_ingress(default_issuer: str) -> Any:
    def project(obj: dict[str, Any]) -> IngressObj:
        meta = _meta(obj)
        annotations = meta.get("annotations") or {}
        issuer = ""
        if annotations.get("cert-manager.io/cluster-issuer"):
            issuer = "ClusterIssuer/" + annotations["cert-manager.io/cluster-issuer"]
        elif annotations.get("cert-manager.io/issuer"):
            issuer = "Issuer/" + annotations["cert-manager.io/issuer"]
        elif annotations.get("kubernetes.io/tls-acme", "").lower() == "true":
            issuer = default_issuer or "-"  # "-": annotated, but no default issuer configured
        tls = tuple(
            (str(entry.get("secretName") or ""), tuple(str(h) for h in entry.get("hosts") or ()))
            for entry in (obj.get("spec") or {}).get("tls") or ()
        )
        return IngressObj(meta.get("namespace", ""), meta.get("name", ""), meta.get("uid", ""), issuer, tls)

    return project


# -- targets: what one reconcile works on -------------------------------------------------------


@dataclass(frozen=True)
class Refusal:
    """Bad input: the Certificate's Ready condition says ``reason``/``message``; nothing is ordered."""

    reason: str
    message: str


@dataclass(frozen=True)
class Target:
    namespace: str
    name: str  # the Certificate
    uid: str
    generation: int
    spec: CertSpec
    secret_name: str
    issuer: str  # issuer_ref(): "Issuer/ns/name" or "ClusterIssuer//name"
    keys: str
    rollout: tuple[tuple[str, str], ...]  # (kind, name)
    labels: tuple[tuple[str, str], ...]
    annotations: tuple[tuple[str, str], ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


def issuer_ref(kind: str, namespace: str, name: str) -> str:
    return f"{kind}/{namespace if kind == 'Issuer' else ''}/{name}"


def unknown_fields(spec: dict[str, Any], known: dict[str, Any], prefix: str = "spec") -> list[str]:
    found: list[str] = []
    for field_name, value in spec.items():
        if field_name not in known:
            found.append(f"{prefix}.{field_name}")
        elif isinstance(known[field_name], dict) and isinstance(value, dict):
            found.extend(unknown_fields(value, known[field_name], f"{prefix}.{field_name}"))
    return found


def parse_duration(text: str) -> datetime.timedelta:
    """A Go duration as cert-manager takes it (``720h``, ``1h30m``)."""
    total = 0.0
    units = {"h": 3600, "m": 60, "s": 1}
    if not re.fullmatch(r"(\d+(\.\d+)?(h|m|s))+", text):
        raise ConfigError(f"renewBefore {text!r} is not a duration", "write it like 720h or 1h30m")
    for number, unit in _DURATION.findall(text):
        total += float(number) * units[unit]
    return datetime.timedelta(seconds=total)


def key_type(private_key: dict[str, Any]) -> KeyType:
    algorithm = str(private_key.get("algorithm") or "ECDSA").upper()
    size = private_key.get("size")
    if algorithm == "RSA":
        return KeyType.parse(f"rsa-{size or 2048}")
    if size in (None, 256):
        return KeyType.EC_P256
    if size == 384:
        return KeyType.EC_P384
    raise ConfigError(f"privateKey.size {size} is not an ECDSA curve size", "use 256 or 384 for ECDSA")


def certificate_target(cert: CertificateObj) -> Target | Refusal:
    """The Certificate as a Target, or the Refusal that says what to fix in it.

    Whether the issuer's solvers can prove each name (a wildcard needs DNS-01) is the reconciler's
    check (``issuers.refuse_names``), once the issuer is known.
    """
    spec = cert.spec
    extra = unknown_fields(spec, KNOWN_CERT_FIELDS)
    if extra:
        return Refusal(
            "UnsupportedField",
            f"{', '.join(extra)}: not supported by certkeeper; remove it (docs/controller.md lists the fields)",
        )
    if cert.problem:
        return Refusal("ListenerNotServed", cert.problem)
    raw_names = [str(n) for n in spec.get("dnsNames") or ()]
    raw_addresses = [str(a) for a in spec.get("ipAddresses") or ()]
    if not raw_names and not raw_addresses:
        return Refusal("InvalidSpec", "spec.dnsNames is empty: list at least one DNS name (or spec.ipAddresses)")
    bad_addresses = [a for a in raw_addresses if ip_of(a) is None]
    if bad_addresses:
        return Refusal("InvalidName", f"spec.ipAddresses: {bad_addresses[0]!r} is not an IPv4 or IPv6 address")
    try:
        names = normalize_names(raw_names + raw_addresses, allow_wildcard=True)
    except ConfigError as error:
        return Refusal("InvalidName", f"spec.dnsNames: {error}")
    private_key = spec.get("privateKey") or {}
    try:
        kind = key_type(private_key)
        renew_before = parse_duration(spec["renewBefore"]) if spec.get("renewBefore") else None
    except ConfigError as error:
        return Refusal("InvalidSpec", str(error))
    ref = spec.get("issuerRef") or {}
    issuer_kind = ref.get("kind") or "Issuer"
    rollout: list[tuple[str, str]] = []
    for item in spec.get("rollout") or ():
        kind_text, _, name = str(item).partition("/")
        if kind_text.lower() not in ROLLOUT_KINDS or not name:
            return Refusal("InvalidSpec", f"spec.rollout: {item!r} is not kind/name (e.g. deployment/web)")
        rollout.append((ROLLOUT_KINDS[kind_text.lower()], name))
    template = spec.get("secretTemplate") or {}
    annotations = dict(template.get("annotations") or {})
    annotations[CERTIFICATE_REF] = cert.name
    return Target(
        namespace=cert.namespace,
        name=cert.name,
        uid=cert.uid,
        generation=cert.generation,
        spec=CertSpec(
            names=names,
            key_type=kind,
            reuse_key=private_key.get("rotationPolicy") == "Never",
            profile=spec.get("profile") or None,
            renew_before=renew_before,
            store_key=f"{cert.namespace}/{spec.get('secretName')}",
        ),
        secret_name=str(spec.get("secretName")),
        issuer=issuer_ref(issuer_kind, cert.namespace, str(ref.get("name", ""))),
        keys=str(spec.get("keys") or "tls"),
        rollout=tuple(rollout),
        labels=tuple(sorted((template.get("labels") or {}).items())),
        annotations=tuple(sorted(annotations.items())),
    )


def run_target(config: RunConfig) -> Target:
    """``certkeeper run``'s environment as the one target it keeps: the seed's keys in its Secret, its
    RCs (``RC_NAMES``) and then its workloads (``DEPLOYMENTS``/``WORKLOADS``) rolled out after a change."""
    rcs = tuple(("ReplicationController", name) for name in config.rc_names)
    return Target(
        namespace=config.namespace,
        name=config.secret_name,
        uid="",
        generation=0,
        spec=config.spec,
        secret_name=config.secret_name,
        issuer="",  # the environment's issuer, not a resource
        keys="seed",
        rollout=rcs + tuple((w.kind, w.name) for w in config.workloads),
        labels=(),
        annotations=(),
    )


def ingress_certificates(ingress: IngressObj) -> list[dict[str, Any]]:
    """The Certificates an annotated Ingress asks for: one per spec.tls entry, owned by the Ingress."""
    if not ingress.issuer or ingress.issuer == "-":
        return []
    kind, _, issuer_name = ingress.issuer.partition("/")
    bodies: list[dict[str, Any]] = []
    for secret_name, hosts in ingress.tls:
        if not secret_name or not hosts:
            continue
        bodies.append(
            {
                "apiVersion": API_VERSION,
                "kind": "Certificate",
                "metadata": {
                    "name": secret_name,
                    "namespace": ingress.namespace,
                    "labels": {"app.kubernetes.io/managed-by": "certkeeper"},
                    "ownerReferences": [
                        {
                            "apiVersion": "networking.k8s.io/v1",
                            "kind": "Ingress",
                            "name": ingress.name,
                            "uid": ingress.uid,
                            "controller": True,
                            "blockOwnerDeletion": True,
                        }
                    ],
                },
                "spec": {
                    "secretName": secret_name,
                    "dnsNames": list(hosts),
                    "issuerRef": {"name": issuer_name, "kind": kind},
                },
            }
        )
    return bodies
