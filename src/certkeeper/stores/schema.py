"""``meta.json``: what a stored certificate was ordered with, written and read through one schema.

``to_meta`` writes it; ``from_meta`` reads it back into the choices to renew with, or raises a
``MetaError`` naming the first thing that is wrong, so a damaged file becomes a per-certificate
problem (shown by ``status``, an error from ``renew``) instead of a traceback or a silent skip.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from certkeeper.errors import CertkeeperError
from certkeeper.model import CertInfo
from certkeeper.spec import CertSpec, IssuerSpec, KeyType, normalize_names


class MetaError(CertkeeperError):
    """meta.json is missing, unreadable or of the wrong shape."""


@dataclass(frozen=True)
class StoredChoices:
    """What ``renew`` needs to order a stored certificate again."""

    spec: CertSpec
    directory_url: str
    email: str | None
    ca_bundle: str | None
    solvers: list[dict[str, Any]] = field(default_factory=list)  # as recorded; empty: HTTP-01 alone


def to_meta(
    spec: CertSpec,
    issuer: IssuerSpec,
    info: CertInfo,
    replaces: str | None,
    now: datetime.datetime,
    solvers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    return {
        "names": list(spec.names),
        "key_type": spec.key_type.value,
        "reuse_key": spec.reuse_key,
        "profile": spec.profile,
        "preferred_chain": spec.preferred_chain,
        "issuer": info.issuer,
        "serial": info.serial,
        "not_before": info.not_before.isoformat(),
        "not_after": info.not_after.isoformat(),
        "ari_id": info.ari_id,
        "fingerprint": info.fingerprint,
        "replaces": replaces,
        "directory_url": issuer.directory_url,
        "ca_bundle": issuer.ca_bundle,
        "email": issuer.email,
        "solvers": solvers or [],
        "issued_at": now.isoformat(),
    }


def _optional_text(meta: dict[str, Any], key: str) -> str | None:
    value = meta.get(key)
    if value is None or (isinstance(value, str) and value):
        return value
    raise MetaError(f"meta.json: {key!r} is not text")


def from_meta(meta: object) -> StoredChoices:
    if not isinstance(meta, dict) or not meta:
        raise MetaError("meta.json is missing or unreadable" if not meta else "meta.json is not a JSON object")
    names = meta.get("names")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise MetaError("meta.json has no list of names")
    directory_url = meta.get("directory_url")
    if not isinstance(directory_url, str) or not directory_url.startswith(("https://", "http://")):
        raise MetaError("meta.json has no CA directory URL")
    key_type = meta.get("key_type", KeyType.EC_P256.value)
    reuse_key = meta.get("reuse_key", False)
    if not isinstance(key_type, str):
        raise MetaError("meta.json: 'key_type' is not text")
    if not isinstance(reuse_key, bool):
        raise MetaError("meta.json: 'reuse_key' is not true or false")
    try:
        spec = CertSpec(
            normalize_names(names, allow_wildcard=True),
            KeyType.parse(key_type),
            reuse_key,
            _optional_text(meta, "profile"),
            _optional_text(meta, "preferred_chain"),
        )
    except MetaError:
        raise
    except CertkeeperError as error:
        raise MetaError(f"meta.json: {error}") from None
    solvers = meta.get("solvers") or []
    if not isinstance(solvers, list) or not all(isinstance(s, dict) for s in solvers):
        raise MetaError("meta.json: 'solvers' is not a list of solver settings")
    email, ca_bundle = _optional_text(meta, "email"), _optional_text(meta, "ca_bundle")
    return StoredChoices(spec, directory_url, email, ca_bundle, solvers)


def meta_problem(stored_meta: object, unreadable: str | None = None) -> str | None:
    """What is wrong with a stored meta.json (``unreadable``: what the store found reading it), or None."""
    if unreadable:
        return unreadable
    try:
        from_meta(stored_meta)
    except MetaError as error:
        return str(error)
    return None
