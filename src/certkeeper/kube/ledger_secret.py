"""The rate-limit ledger in the cluster: one Secret (``certkeeper-rate-limits``) in the controller's namespace.

Every replica and every run reads and writes the same record. A change is read-modify-replace with the
Secret's ``resourceVersion``: when another writer got there first (409) the change is made again on
what it wrote, so the reservation of the last slot under a limit stays one step across replicas.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
from collections.abc import Callable
from typing import Any, TypeVar

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret

from certkeeper.errors import CertkeeperError
from certkeeper.kube.api import call_api, fail, is_not_found

log = logging.getLogger(__name__)
T = TypeVar("T")
SECRET_NAME = "certkeeper-rate-limits"
DATA_KEY = "ratelimits.json"
CONFLICT_RETRIES = 20  # many replicas' workers may reserve at once; each retry re-reads


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

    @staticmethod
    def _events(secret: Secret | None) -> list[dict[str, Any]]:
        if secret is None or not secret.data or DATA_KEY not in secret.data:
            return []
        try:
            data = json.loads(base64.b64decode(secret.data[DATA_KEY], validate=True))
        except (binascii.Error, ValueError) as error:
            log.warning("the rate-limit ledger Secret is unreadable (%s); starting a new one", error)
            return []
        return [e for e in data.get("events", []) if isinstance(e, dict)] if isinstance(data, dict) else []

    def read(self) -> list[dict[str, Any]]:
        return self._events(self._get())

    def update(self, change: Callable[[list[dict[str, Any]]], T]) -> T:
        what = f"write Secret {self.namespace}/{self.name} (the rate-limit ledger)"
        for _ in range(CONFLICT_RETRIES):
            existing = self._get()
            events = self._events(existing)
            result = change(events)
            document = json.dumps({"version": 1, "events": events}, separators=(",", ":")).encode()
            metadata = ObjectMeta(
                name=self.name,
                namespace=self.namespace,
                labels={"app.kubernetes.io/managed-by": "certkeeper"},
                resourceVersion=existing.metadata.resourceVersion if existing and existing.metadata else None,
            )
            body = Secret(metadata=metadata, type="Opaque", data={DATA_KEY: base64.b64encode(document).decode()})
            try:
                self.client.create(body) if existing is None else self.client.replace(body)
                return result
            except ApiError as error:
                if error.status.code == 409:
                    continue  # another writer changed it: make the change again on theirs
                fail(what, error)
            except OSError as error:
                fail(what, error)
        raise CertkeeperError(f"cannot {what}: it kept changing (409)", "certkeeper tries again at the next check")
