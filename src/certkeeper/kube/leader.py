"""Leader election on a ``coordination.k8s.io/v1`` Lease: one replica orders, the others stand by.

As client-go does, a Lease is judged expired by this replica's own clock: it is taken over only when
its record has not changed for ``leaseDurationSeconds`` since this replica last saw it change, so
clock skew between nodes does not matter. Updates carry the resourceVersion, so two replicas can
never both win: the loser gets 409 and keeps waiting.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
from typing import Any

import httpx2

from certkeeper.kube.api import KubeApiError, check_response

log = logging.getLogger("certkeeper.leader")


def _micro(moment: datetime.datetime) -> str:
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class LeaderElector:
    def __init__(
        self, http: httpx2.AsyncClient, namespace: str, name: str, identity: str, duration_s: int = 15
    ) -> None:
        self.http = http
        self.namespace = namespace
        self.name = name
        self.identity = identity
        self.duration_s = max(2, duration_s)
        self.renew_every_s = self.duration_s / 3
        self.retry_every_s = max(0.5, self.duration_s / 5)
        self.is_leader = False
        self._renewed = 0.0  # monotonic time of the last successful take or renewal
        self._seen: tuple[str, float] = ("", 0.0)  # (record as last seen, monotonic time it last changed)
        self._path = f"/apis/coordination.k8s.io/v1/namespaces/{namespace}/leases/{name}"

    def _spec(self, transitions: int, acquired: str | None = None) -> dict[str, Any]:
        now = _micro(datetime.datetime.now(datetime.UTC))
        return {
            "holderIdentity": self.identity,
            "leaseDurationSeconds": self.duration_s,
            "acquireTime": acquired or now,
            "renewTime": now,
            "leaseTransitions": transitions,
        }

    async def _try(self) -> bool:
        """One attempt to take or renew the Lease."""
        response = await self.http.get(self._path)
        if response.status_code == 404:
            body = {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": self.name, "namespace": self.namespace},
                "spec": self._spec(0),
            }
            created = await self.http.post(self._path.rsplit("/", 1)[0], json=body)
            if created.status_code == 409:
                return False
            check_response(f"create Lease {self.namespace}/{self.name}", created)
            self._renewed = time.monotonic()
            return True
        lease = check_response(f"read Lease {self.namespace}/{self.name}", response)
        spec = lease.get("spec") or {}
        holder = spec.get("holderIdentity") or ""
        record = f"{holder}|{spec.get('renewTime')}|{spec.get('leaseTransitions')}"
        now = time.monotonic()
        if record != self._seen[0]:
            self._seen = (record, now)
        duration = float(spec.get("leaseDurationSeconds") or self.duration_s)
        if holder and holder != self.identity and now - self._seen[1] < duration:
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder == self.identity:
            lease["spec"] = self._spec(transitions, spec.get("acquireTime"))
        else:
            lease["spec"] = self._spec(transitions + 1)
            if holder:  # a Lease given back at a clean stop (or by `run` after each check) is no news
                log.info("taking over Lease %s/%s from %s", self.namespace, self.name, holder)
        updated = await self.http.put(self._path, json=lease)
        if updated.status_code == 409:
            return False
        check_response(f"update Lease {self.namespace}/{self.name}", updated)
        self._renewed = now
        return True

    def leads(self) -> bool:
        """Leading, and surely still: renewed within the renew deadline (another replica can take the Lease
        only after a whole duration without renewal, by its own clock). Read from any thread."""
        return self.is_leader and time.monotonic() - self._renewed < self.duration_s * 2 / 3

    async def acquire(self) -> None:
        """Return once this replica leads."""
        said = ""
        while True:
            try:
                if await self._try():
                    self.is_leader = True
                    log.info("this replica (%s) leads: it places the orders", self.identity)
                    return
            except (KubeApiError, httpx2.HTTPError, OSError, ValueError) as error:
                line = f"cannot take the Lease {self.namespace}/{self.name}: {error}"
                # Once per kind of failure, not once a second through an outage.
                log.log(logging.WARNING if line != said else logging.DEBUG, "%s", line)
                said = line
            await asyncio.sleep(self.retry_every_s)

    async def hold(self) -> None:
        """Renew until the Lease cannot be renewed within its duration; then return (leadership lost)."""
        last_renewed = time.monotonic()
        while True:
            await asyncio.sleep(self.renew_every_s)
            try:
                if await self._try():
                    last_renewed = time.monotonic()
                    continue
                log.error("another replica holds the Lease %s/%s now", self.namespace, self.name)
                break
            except (KubeApiError, httpx2.HTTPError, OSError, ValueError) as error:
                log.warning("cannot renew the Lease %s/%s: %s", self.namespace, self.name, error)
            if time.monotonic() - last_renewed > self.duration_s * 2 / 3:
                break
        self.is_leader = False

    async def release(self) -> None:
        """Give the Lease up at a clean stop, so another replica takes over at once."""
        if not self.is_leader:
            return
        try:
            response = await self.http.get(self._path)
            lease = check_response("read Lease", response)
            if (lease.get("spec") or {}).get("holderIdentity") == self.identity:
                lease["spec"]["holderIdentity"] = ""
                await self.http.put(self._path, json=lease)
        except (KubeApiError, httpx2.HTTPError, OSError, ValueError) as error:
            log.warning("cannot release the Lease: %s", error)
        self.is_leader = False
