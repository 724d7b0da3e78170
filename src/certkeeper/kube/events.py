"""Kubernetes Events (core/v1) for what certkeeper did: issued, renewed, failed, rolled.

Messages carry names, serials and dates, never key material. Recording an Event never fails the caller.
"""

from __future__ import annotations

import datetime
import logging
import secrets
import socket

from lightkube import Client
from lightkube.models.core_v1 import EventSource, ObjectReference
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Event

from certkeeper.errors import CertkeeperError
from certkeeper.kube.api import call_api

log = logging.getLogger(__name__)
COMPONENT = "certkeeper"


class Recorder:
    def __init__(self, client: Client, namespace: str) -> None:
        self.client = client
        self.namespace = namespace
        self.host = socket.gethostname()

    def emit(
        self,
        kind: str,
        name: str,
        reason: str,
        message: str,
        *,
        warning: bool = False,
        api_version: str = "v1",
        uid: str | None = None,
    ) -> None:
        now = datetime.datetime.now(datetime.UTC)
        event = Event(
            metadata=ObjectMeta(name=f"{name}.{secrets.token_hex(8)}", namespace=self.namespace),
            involvedObject=ObjectReference(
                kind=kind, name=name, namespace=self.namespace, apiVersion=api_version, uid=uid
            ),
            reason=reason,
            message=message[:1000],
            type="Warning" if warning else "Normal",
            source=EventSource(component=COMPONENT, host=self.host),
            firstTimestamp=now,
            lastTimestamp=now,
            count=1,
        )
        try:
            call_api(f"record an Event on {kind.lower()}/{name}", lambda: self.client.create(event))
        except CertkeeperError as error:
            log.warning("%s", error)
