"""``certkeeper status --kube``: the cluster's Certificates, like ``cmctl status certificate``.

One table (or JSON) of every Certificate in a namespace (or all); with a NAME, that Certificate's
conditions, times, the order in flight and its recent Events.
"""

from __future__ import annotations

import datetime
from typing import Any

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.core_v1 import Event

from certkeeper.errors import ConfigError
from certkeeper.kube.api import api_error_text, load_kubeconfig
from certkeeper.kube.reconcile import CertificateResource


def _row(obj: Any) -> dict[str, Any]:
    meta, spec, status = obj.metadata, obj.spec or {}, obj.status or {}
    ready: dict[str, Any] = next((c for c in status.get("conditions") or () if c.get("type") == "Ready"), {})
    return {
        "namespace": meta.namespace,
        "name": meta.name,
        "names": list(spec.get("dnsNames") or []) + list(spec.get("ipAddresses") or []),
        "secret": spec.get("secretName"),
        "issuer": (spec.get("issuerRef") or {}).get("name"),
        "ready": ready.get("status", "Unknown"),
        "reason": ready.get("reason"),
        "message": ready.get("message"),
        "not_after": status.get("notAfter"),
        "renewal_time": status.get("renewalTime"),
        "failed_attempts": status.get("failedIssuanceAttempts") or 0,
        "last_failure_time": status.get("lastFailureTime"),
        "order": status.get("order"),
        "conditions": status.get("conditions") or [],
    }


def certificates(namespace: str | None, name: str | None) -> list[dict[str, Any]]:
    """Rows for the Certificates asked for (``namespace`` None: all; "": the context's); a named one
    missing is a ConfigError."""
    config = load_kubeconfig()
    where = namespace or "the context's namespace"
    try:
        client = Client(config, field_manager="certkeeper-status")
        namespace = client.namespace if namespace == "" else namespace
        where = namespace or "any namespace"
        if name:
            found = client.get(CertificateResource, name, namespace=namespace)
            row = _row(found)
            row["events"] = [
                {"type": e.type, "reason": e.reason, "message": e.message,
                 "time": str(e.lastTimestamp or e.eventTime or "")}
                for e in client.list(Event, namespace=row["namespace"],
                                     fields={"involvedObject.kind": "Certificate", "involvedObject.name": name})
            ][-10:]  # fmt: skip
            return [row]
        listed = client.list(CertificateResource, namespace="*" if namespace is None else namespace)
        return sorted((_row(c) for c in listed), key=lambda r: (r["namespace"], r["name"]))
    except ApiError as error:
        if error.status.code == 404 and name:
            raise ConfigError(f"no Certificate {name} in namespace {where}",
                              "list them with certkeeper status --kube") from None  # fmt: skip
        fix = "check the kubeconfig context, and that certkeeper's CRDs are installed"
        raise ConfigError(f"cannot read Certificates in {where} ({api_error_text(error)})", fix) from None
    except Exception as error:  # connection refused, TLS, timeouts: one line, not a traceback
        raise ConfigError(f"cannot reach the Kubernetes API ({api_error_text(error)})",
                          "check KUBECONFIG and its current context") from None  # fmt: skip


def relative(stamp: str | None) -> str:
    if not stamp:
        return "-"
    moment = datetime.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    days = (moment - datetime.datetime.now(datetime.UTC)).total_seconds() / 86400
    return f"{stamp[:16].replace('T', ' ')} ({days:+.0f} d)"
