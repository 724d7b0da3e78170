"""``certkeeper run``'s Lease, named after its Secret: two instances for the same Secret never order or
roll out at the same time (one waits while the other works, then finds the certificate already stored).

Held only while a check, its order and its rollout last (renewed meanwhile), so an idle instance makes
no API requests. Without RBAC for Leases (a Role written for the seed) it works as before, with a warning.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket

import httpx2
from lightkube import KubeConfig
from lightkube.config.client_adapter import AsyncClient as http_client
from lightkube.config.client_adapter import ConnectionParams

from certkeeper.kube.api import KubeApiError
from certkeeper.kube.leader import LeaderElector

log = logging.getLogger("certkeeper.run")
API_TIMEOUT_S = 10.0


class RunLease:
    def __init__(self, kubeconfig: KubeConfig, namespace: str, name: str, duration_s: int = 15) -> None:
        current = kubeconfig.get()
        assert current is not None
        self.http = http_client(current, ConnectionParams(timeout=httpx2.Timeout(API_TIMEOUT_S)))
        # In a pod: the pod's name and PID 1, so a restarted container takes its own Lease back at once.
        identity = f"{socket.gethostname()}-{os.getpid()}"
        self.elector = LeaderElector(self.http, namespace, name, identity, duration_s)
        self.what = f"Lease {namespace}/{name}"
        self.without = False  # no permission for Leases: work without one
        self._holder: asyncio.Task[None] | None = None

    async def acquire(self) -> None:
        """Return once this instance holds the Lease (or cannot use Leases at all)."""
        if self.without:
            return
        said = ""
        while True:
            try:
                if await self.elector._try():
                    break
                line = f"another instance holds the {self.what}: waiting for it"
            except KubeApiError as error:
                if error.code in (403, 404):
                    self.without = True
                    log.warning(
                        "%s; working without it: a second instance for the same Secret would order again "
                        "(grant leases get/create/update, as deploy/certkeeper/rbac.yaml does)",
                        error,
                    )
                    return
                line = str(error)
            except (httpx2.HTTPError, OSError, ValueError) as error:
                line = f"cannot take the {self.what}: {error}"
            if line != said:  # once per kind of wait, not once a second
                log.info("%s", line)
                said = line
            await asyncio.sleep(self.elector.retry_every_s)
        self.elector.is_leader = True
        self._holder = asyncio.create_task(self.elector.hold())

    async def release(self) -> None:
        if self._holder is not None:
            self._holder.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._holder
            self._holder = None
        if not self.without:
            self.elector.is_leader = True  # give it up even if a renewal was missed
            await self.elector.release()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.release()
        await self.http.aclose()
