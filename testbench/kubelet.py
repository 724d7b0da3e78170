"""A kubelet stand-in for the test cluster: one fake Node whose pods "run" without containers.

It does the parts of a kubelet that controllers can observe, and nothing else:
- registers a Ready Node with room for pods, and renews its Lease in ``kube-node-lease`` so the node
  lifecycle controller keeps it Ready;
- for each pod the scheduler binds to the node, waits ``ready_delay`` seconds, then reports it Running
  with Ready and ContainersReady conditions and ready container statuses;
- for each pod being deleted (``deletionTimestamp`` set), finishes the deletion with grace period 0,
  as a kubelet does once the containers are gone.

That is enough for ReplicationControllers to replace deleted pods and for Deployment rollouts to proceed.
It authenticates as ``system:node:<name>``, so the Node authorizer limits it as it limits a real kubelet.

Run: ``python -m testbench.kubelet --kubeconfig PATH --node-name NAME [--ready-delay S]``.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import ipaddress
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from typing import Any, cast

from lightkube import AsyncClient, KubeConfig
from lightkube.core.exceptions import ApiError
from lightkube.resources.coordination_v1 import Lease
from lightkube.resources.core_v1 import Node, Pod

log = logging.getLogger("testbench.kubelet")

LEASE_NAMESPACE = "kube-node-lease"
LEASE_SECONDS = 40
RENEW_EVERY = 10.0
FIELD_MANAGER = "certkeeper-kubelet"


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _micro_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _pod_ips() -> Iterator[str]:
    for address in ipaddress.ip_network("10.244.0.0/16").hosts():
        yield str(address)


def running_status(pod: Pod, pod_ip: str) -> dict[str, Any]:
    """The status a kubelet reports once every container of ``pod`` has started and is ready."""
    now = _now()
    containers = pod.spec.containers if pod.spec is not None else []
    uid = pod.metadata.uid if pod.metadata is not None else ""
    return {
        "phase": "Running",
        "hostIP": "127.0.0.1",
        "podIP": pod_ip,
        "podIPs": [{"ip": pod_ip}],
        "startTime": now,
        "conditions": [
            {"type": kind, "status": "True", "lastTransitionTime": now}
            for kind in ("Initialized", "Ready", "ContainersReady", "PodScheduled")
        ],
        "containerStatuses": [
            {
                "name": container.name,
                "image": container.image or "",
                "imageID": "",
                "containerID": f"certkeeper://{uid}/{container.name}",
                "ready": True,
                "started": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": now}},
            }
            for container in containers
        ],
    }


class Kubelet:
    def __init__(self, client: AsyncClient, node_name: str, ready_delay: float) -> None:
        self.client = client
        self.node_name = node_name
        self.ready_delay = ready_delay
        self._starting: dict[str, asyncio.Task[None]] = {}
        self._finishing: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._ips = _pod_ips()

    def _node_status(self) -> dict[str, Any]:
        resources = {"cpu": "8", "memory": "32Gi", "pods": "110", "ephemeral-storage": "100Gi"}
        now = _now()
        return {
            "capacity": resources,
            "allocatable": resources,
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "reason": "KubeletReady",
                    "message": "certkeeper kubelet stand-in is ready",
                    "lastHeartbeatTime": now,
                    "lastTransitionTime": now,
                }
            ],
            "addresses": [
                {"type": "InternalIP", "address": "127.0.0.1"},
                {"type": "Hostname", "address": self.node_name},
            ],
        }

    async def register(self) -> None:
        status = self._node_status()
        node = cast(
            Node,
            Node.from_dict(
                {
                    "metadata": {
                        "name": self.node_name,
                        "labels": {
                            "kubernetes.io/hostname": self.node_name,
                            "kubernetes.io/os": "linux",
                            "kubernetes.io/arch": "amd64",
                        },
                    },
                    "status": status,
                }
            ),
        )
        try:
            await self.client.create(node)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
        # A Node created before (a restarted stand-in) keeps its old status unless it is set again.
        await self.client.patch(Node.Status, self.node_name, {"status": status})
        log.info("node %s registered", self.node_name)

    async def renew_lease(self) -> None:
        """Heartbeat: the node lifecycle controller marks a node NotReady when its Lease goes stale."""
        lease = cast(
            Lease,
            Lease.from_dict(
                {
                    "metadata": {"name": self.node_name, "namespace": LEASE_NAMESPACE},
                    "spec": {"holderIdentity": self.node_name, "leaseDurationSeconds": LEASE_SECONDS},
                }
            ),
        )
        try:
            await self.client.create(lease)
        except ApiError as exc:
            if exc.status.code != 409:
                raise
        failed = False
        while True:
            try:
                await self.client.patch(
                    Lease,
                    self.node_name,
                    {"spec": {"renewTime": _micro_now().strftime("%Y-%m-%dT%H:%M:%S.%fZ")}},
                    namespace=LEASE_NAMESPACE,
                )
                if failed:
                    # After an outage the node lifecycle controller may have set Ready to Unknown; a real
                    # kubelet posts its status again, and only that makes the node Ready.
                    await self.client.patch(Node.Status, self.node_name, {"status": self._node_status()})
                    log.info("node %s status posted again after the API was back", self.node_name)
                    failed = False
            except Exception as exc:  # an API server restart: connection refused, 503, ...
                log.warning("lease renewal failed: %s", exc)
                failed = True
                await asyncio.sleep(1.0)
                continue
            await asyncio.sleep(RENEW_EVERY)

    async def watch_pods(self) -> None:
        while True:
            try:
                async for kind, pod in self.client.watch(Pod, namespace="*", fields={"spec.nodeName": self.node_name}):
                    self.handle(kind, pod)
            except Exception as exc:
                # Whatever broke the stream (410 Gone, a dropped connection), a fresh watch replays
                # every pod as ADDED, so nothing is missed across the gap.
                log.warning("pod watch ended (%s); watching again", exc)
                await asyncio.sleep(0.5)

    def handle(self, kind: str, pod: Pod) -> None:
        meta = pod.metadata
        if meta is None or meta.uid is None or meta.name is None:
            return
        uid = meta.uid
        if kind == "DELETED":
            task = self._starting.pop(uid, None)
            if task is not None:
                task.cancel()
            self._finishing.discard(uid)
            return
        if meta.deletionTimestamp is not None:
            task = self._starting.pop(uid, None)
            if task is not None:
                task.cancel()
            if uid not in self._finishing:
                self._finishing.add(uid)
                task = asyncio.create_task(self._finish(pod))
                # The loop keeps only weak references to tasks; hold one until the task ends.
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            return
        phase = pod.status.phase if pod.status is not None else None
        if phase in ("Running", "Succeeded", "Failed") or uid in self._starting:
            return
        self._starting[uid] = asyncio.create_task(self._start(pod))

    async def _start(self, pod: Pod) -> None:
        assert pod.metadata is not None and pod.metadata.name is not None
        await asyncio.sleep(self.ready_delay)
        status = running_status(pod, next(self._ips))
        # Through an API server restart: try again (bounded) rather than leave the pod Pending.
        for _attempt in range(60):
            try:
                await self.client.patch(
                    Pod.Status, pod.metadata.name, {"status": status}, namespace=pod.metadata.namespace
                )
                log.info("pod %s/%s running", pod.metadata.namespace, pod.metadata.name)
                return
            except ApiError as exc:
                if exc.status.code == 404:
                    return
                log.warning("could not report pod %s running: %s", pod.metadata.name, exc)
            except Exception as exc:  # the API unreachable
                log.warning("could not report pod %s running: %s; again in 1 s", pod.metadata.name, exc)
            await asyncio.sleep(1.0)
        # Forget it so that the next event about the pod tries again.
        self._starting.pop(pod.metadata.uid or "", None)

    async def _finish(self, pod: Pod) -> None:
        assert pod.metadata is not None and pod.metadata.name is not None
        for _attempt in range(60):
            try:
                await self.client.delete(Pod, pod.metadata.name, namespace=pod.metadata.namespace, grace_period=0)
                log.info("pod %s/%s deleted", pod.metadata.namespace, pod.metadata.name)
                return
            except ApiError as exc:
                if exc.status.code == 404:
                    return
                log.warning("could not finish deleting pod %s: %s", pod.metadata.name, exc)
            except Exception as exc:  # the API unreachable
                log.warning("could not finish deleting pod %s: %s; again in 1 s", pod.metadata.name, exc)
            await asyncio.sleep(1.0)
        self._finishing.discard(pod.metadata.uid or "")


async def run(kubeconfig: str, node_name: str, ready_delay: float) -> None:
    client = AsyncClient(KubeConfig.from_file(kubeconfig), field_manager=FIELD_MANAGER)
    kubelet = Kubelet(client, node_name, ready_delay)
    await kubelet.register()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(kubelet.renew_lease()), asyncio.create_task(kubelet.watch_pods())]
    stopped = asyncio.create_task(stop.wait())
    done, _ = await asyncio.wait([*tasks, stopped], return_when=asyncio.FIRST_COMPLETED)
    for task in [*tasks, stopped]:
        task.cancel()
    await client.close()
    # A loop that ended by itself failed: exit non-zero so the failure shows in the stand-in's log.
    for task in done:
        if task is not stopped and not task.cancelled() and (error := task.exception()) is not None:
            raise error


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--kubeconfig", required=True)
    parser.add_argument("--node-name", required=True)
    parser.add_argument("--ready-delay", type=float, default=0.2)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stderr)
    # One line per HTTP request would bury what the stand-in did to which pod.
    logging.getLogger("httpx2").setLevel(logging.WARNING)
    asyncio.run(run(args.kubeconfig, args.node_name, args.ready_delay))
    return 0


if __name__ == "__main__":
    sys.exit(main())
