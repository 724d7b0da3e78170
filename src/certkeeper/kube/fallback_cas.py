"""An issuer's fallback CAs (``spec.acme.fallback``): further ACME CAs, in order, for when the first
persistently refuses (certkeeper.fallback decides which refusals those are).

Each CA keeps its own account in its own ``privateKeySecretRef`` Secret (one account per Secret, as for
the first CA) and may need its own EAB key and CA bundle. The engine orders from them inside the
certificate's run, so never two CAs order the same certificate at once; the Secret's meta records the CA
that issued it, the Certificate's ``status.issuedBy`` shows it, and renewal starts again at the first CA.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lightkube import Client

from certkeeper.errors import ConfigError
from certkeeper.fallback import Fallback
from certkeeper.kube.secret_store import SecretStore
from certkeeper.kube.sources import unknown_fields
from certkeeper.spec import IssuerSpec, resolve_server

FALLBACK_FIELDS: dict[str, Any] = {
    "server": None,
    "email": None,
    "privateKeySecretRef": {"name": None, "key": None},
    "caBundle": None,
    "externalAccountBinding": {"keyID": None, "keySecretRef": {"name": None, "key": None}},
}
MAX_FALLBACKS = 4  # as the CRD allows: each one more CA a failing certificate may be ordered from


@dataclass(frozen=True)
class FallbackCA:
    issuer: IssuerSpec  # the EAB HMAC key still a marker: read from its Secret when the engine is made
    account_secret: str
    eab_secret: str = ""
    eab_key: str = "secret"


def write_bundle(encoded: str, bundles: Path, field: str) -> str:
    """Keep a base64 PEM bundle in ``bundles`` (named by its digest); its path."""
    try:
        pem = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{field} is not base64 (PEM)", "encode the PEM bundle with base64") from None
    path = bundles / (hashlib.sha256(pem).hexdigest()[:16] + ".pem")
    if not path.exists():
        path.write_bytes(pem)
    return str(path)


def parse_fallback(acme: dict[str, Any], bundles: Path) -> tuple[FallbackCA, ...]:
    """``acme.fallback`` as declared; ConfigError naming the field that is wrong."""
    declared = acme.get("fallback") or []
    if not isinstance(declared, list):
        raise ConfigError("acme.fallback is not a list", "list the fallback CAs: [{server, privateKeySecretRef}]")
    if len(declared) > MAX_FALLBACKS:
        raise ConfigError(f"acme.fallback lists {len(declared)} CAs", f"list at most {MAX_FALLBACKS}")
    first_secret = str((acme.get("privateKeySecretRef") or {}).get("name", ""))
    seen_servers = {str(acme.get("server", ""))}
    seen_secrets = {first_secret}
    found: list[FallbackCA] = []
    for index, item in enumerate(declared):
        where = f"acme.fallback[{index}]"
        if not isinstance(item, dict):
            raise ConfigError(f"{where} is not an object", "give it server and privateKeySecretRef")
        extra = unknown_fields(item, FALLBACK_FIELDS, where)
        if extra:
            raise ConfigError(f"{', '.join(extra)} not supported", "remove it")
        server = str(item.get("server", ""))
        secret = str((item.get("privateKeySecretRef") or {}).get("name", ""))
        if not server or not secret:
            raise ConfigError(f"{where} needs server and privateKeySecretRef.name", "add them")
        if server in seen_servers:
            raise ConfigError(f"{where}.server {server} is listed twice", "list each CA once")
        if secret in seen_secrets:
            raise ConfigError(
                f"{where}.privateKeySecretRef.name {secret} is another CA's account Secret",
                "give each CA its own Secret (one account each)",
            )
        seen_servers.add(server)
        seen_secrets.add(secret)
        eab = item.get("externalAccountBinding") or {}
        bundle = write_bundle(item["caBundle"], bundles, f"{where}.caBundle") if item.get("caBundle") else None
        issuer = IssuerSpec(
            directory_url=resolve_server(server),
            email=item.get("email") or acme.get("email") or None,
            ca_bundle=bundle,
            eab_kid=eab.get("keyID") or None,
            eab_hmac_key="-" if eab else None,
        )
        ref = eab.get("keySecretRef") or {}
        found.append(FallbackCA(issuer, secret, str(ref.get("name", "")), str(ref.get("key") or "secret")))
    return tuple(found)


def build_fallback(client: Client, namespace: str, cas: tuple[FallbackCA, ...], first: SecretStore) -> Fallback:
    """The engine's Fallback: each CA with its EAB key read from its Secret and its own account Secret."""
    issuers: list[IssuerSpec] = []
    stores: list[SecretStore] = []
    for ca in cas:
        issuer = ca.issuer
        if issuer.eab_kid:
            secret = SecretStore(client, namespace, ca.eab_secret).get()
            value = ((secret.data if secret is not None else None) or {}).get(ca.eab_key)
            if not value:
                raise ConfigError(
                    f"the EAB key Secret {namespace}/{ca.eab_secret} of the fallback CA {issuer.directory_url} "
                    f"has no key {ca.eab_key!r}",
                    "store the CA's HMAC key there",
                )
            hmac = base64.b64decode(value).decode().strip()
            issuer = IssuerSpec(issuer.directory_url, issuer.email, issuer.eab_kid, hmac, issuer.ca_bundle)
        issuers.append(issuer)
        stores.append(SecretStore(client, namespace, ca.account_secret, account_secret_name=ca.account_secret))
    return Fallback(issuers, first, stores)
