"""The rate-limit ledger in the cluster: one Secret (``certkeeper-rate-limits``) in the controller's namespace.

Every replica and every run reads and writes the same record. A change is read-modify-replace with the
Secret's ``resourceVersion``: when another writer got there first (409) the change is made again on
what it wrote, so the reservation of the last slot under a limit stays one step across replicas.
The record this process last wrote is kept (with its resourceVersion), so a change starts from it
without a read; a 409 says it went stale. The Secret is not labelled like the Secrets certkeeper
issues into: the controller's Secret watch would otherwise receive the whole record at every write.
"""

from __future__ import annotations

import base64
import binascii
import gzip
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from certkeeper.errors import CertkeeperError
from certkeeper.kube.api import KubeApiError, call_api, decode_json, encode_json, is_not_found

log = logging.getLogger(__name__)
T = TypeVar("T")
SECRET_NAME = "certkeeper-rate-limits"
DATA_KEY = "ratelimits.json.gz"  # gzip: a week's events repeat the same account and domains, ~10x smaller
PLAIN_KEY = "ratelimits.json"  # what certkeeper wrote before; still read, and replaced at the next write
CONFLICT_RETRIES = 20  # many replicas' workers may reserve at once; each retry re-reads
LABELS = {"app.kubernetes.io/part-of": "certkeeper", "app.kubernetes.io/component": "rate-limit-ledger"}


def events_of(secret: Secret | None) -> list[dict[str, Any]]:
    """The events recorded in a ledger Secret (as written now, gzipped, or before, plain)."""
    if secret is None or not secret.data:
        return []
    try:
        if DATA_KEY in secret.data:
            data = decode_json(gzip.decompress(base64.b64decode(secret.data[DATA_KEY], validate=True)))
        elif PLAIN_KEY in secret.data:
            data = decode_json(base64.b64decode(secret.data[PLAIN_KEY], validate=True))
        else:
            return []
    except (binascii.Error, ValueError, OSError, EOFError) as error:  # gzip: OSError (BadGzipFile), EOFError
        log.warning("the rate-limit ledger Secret is unreadable (%s); starting a new one", error)
        return []
    return [e for e in data.get("events", []) if isinstance(e, dict)] if isinstance(data, dict) else []


# Per ledger (namespace/name): the resourceVersion and events this process last wrote. Shared by every
# SecretBackend on it (the controller makes one per reconcile), so each change starts from the last one.
_LAST: dict[str, tuple[str, list[dict[str, Any]]]] = {}
_LOCKS: dict[str, threading.Lock] = {}
_LOCKS_GUARD = threading.Lock()


class SecretBackend:
    def __init__(self, client: Client, namespace: str, name: str = SECRET_NAME) -> None:
        self.client = client
        self.namespace = namespace
        self.name = name

    @property
    def key(self) -> str:
        return f"secret:{self.namespace}/{self.name}"

    def _get(self) -> Secret | None:
        def get() -> Secret | None:
            try:
                return self.client.get(Secret, self.name, namespace=self.namespace)
            except ApiError as error:
                if is_not_found(error):
                    return None
                raise

        found: Secret | None = call_api(f"read Secret {self.namespace}/{self.name}", get)
        return found

    def read(self) -> list[dict[str, Any]]:
        return events_of(self._get())

    def update(self, change: Callable[[list[dict[str, Any]]], T]) -> T:
        with _LOCKS_GUARD:
            lock = _LOCKS.setdefault(self.key, threading.Lock())
        with lock:
            return self._update(change)

    def _update(self, change: Callable[[list[dict[str, Any]]], T]) -> T:
        what = f"write Secret {self.namespace}/{self.name} (the rate-limit ledger)"
        last = _LAST.pop(self.key, None)  # the events list is changed in place: kept again only once written
        version: str | None
        for _ in range(CONFLICT_RETRIES):
            if last is not None:
                version, events = last
                last = None
            else:
                existing = self._get()
                version = existing.metadata.resourceVersion if existing and existing.metadata else None
                events = events_of(existing)
            result = change(events)
            document = encode_json({"version": 1, "events": events})
            document = gzip.compress(document, compresslevel=1, mtime=0)  # level 1: most of the gain, fast
            metadata = ObjectMeta(name=self.name, namespace=self.namespace, labels=LABELS, resourceVersion=version)
            body = Secret(metadata=metadata, type="Opaque", data={DATA_KEY: base64.b64encode(document).decode()})

            def write(body: Secret = body, create: bool = version is None) -> Secret:
                return self.client.create(body) if create else self.client.replace(body)

            try:
                written = call_api(what, write)
            except KubeApiError as error:
                if error.conflict:
                    continue  # another writer changed it (or created it): make the change again on theirs
                if error.not_found and version is not None:
                    continue  # deleted since this process wrote it: read (nothing) and create it again
                raise
            if written.metadata and written.metadata.resourceVersion:
                _LAST[self.key] = (written.metadata.resourceVersion, events)
            return result
        raise CertkeeperError(f"cannot {what}: it kept changing (409)", "certkeeper tries again at the next check")
