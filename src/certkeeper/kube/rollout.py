"""Tell the consumers of a new certificate: replace an RC's pods one at a time, restart workloads.

For a ReplicationController (the post's ``RC_NAMES``) each old pod is deleted in turn, and the next one
only once the RC is back to its desired number of Ready pods, so two or more replicas never drop to
zero Ready. Deployments, StatefulSets and DaemonSets get ``kubectl.kubernetes.io/restartedAt`` on their
pod template, which is what ``kubectl rollout restart`` does; their controllers roll them safely.
A missing workload is reported, not fatal.
"""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.resources.apps_v1 import DaemonSet, Deployment, StatefulSet
from lightkube.resources.core_v1 import Pod, ReplicationController
from lightkube.types import PatchType

from certkeeper.errors import CertkeeperError
from certkeeper.kube.api import api_error_text, call_api, is_not_found
from certkeeper.kube.config import Workload

log = logging.getLogger(__name__)
POLL_S = 0.25
RESTARTED_AT = "kubectl.kubernetes.io/restartedAt"
KINDS: dict[str, Any] = {"Deployment": Deployment, "StatefulSet": StatefulSet, "DaemonSet": DaemonSet}


@dataclass(frozen=True)
class RolloutResult:
    kind: str
    name: str
    ok: bool
    missing: bool
    message: str


def _ready(pod: Pod) -> bool:
    if pod.metadata is None or pod.metadata.deletionTimestamp is not None or pod.status is None:
        return False
    return any(c.type == "Ready" and c.status == "True" for c in pod.status.conditions or [])


def _owned_pods(client: Client, namespace: str, rc: ReplicationController) -> list[Pod]:
    assert rc.spec is not None and rc.metadata is not None
    selector = rc.spec.selector or {}
    pods = call_api(
        f"list the pods of replicationcontroller/{rc.metadata.name}",
        lambda: list(client.list(Pod, namespace=namespace, labels=selector)),
    )
    uid = rc.metadata.uid
    return [p for p in pods if p.metadata is not None and any(o.uid == uid for o in p.metadata.ownerReferences or [])]


def restart_rc(
    client: Client, namespace: str, name: str, timeout: float = 300.0, stopping: Callable[[], bool] = lambda: False
) -> RolloutResult:
    """Delete the RC's pods one by one, each time waiting until it has its desired Ready pods again."""
    try:
        rc = client.get(ReplicationController, name, namespace=namespace)
    except ApiError as error:
        if is_not_found(error):
            return RolloutResult(
                "ReplicationController",
                name,
                False,
                True,
                f"replicationcontroller/{name} not found in namespace {namespace}",
            )
        return RolloutResult(
            "ReplicationController",
            name,
            False,
            False,
            f"cannot read replicationcontroller/{name} ({error.status.code} {error.status.reason})",
        )
    except Exception as error:
        message = f"cannot read replicationcontroller/{name}: {error}"
        return RolloutResult("ReplicationController", name, False, False, message)
    assert rc.spec is not None
    desired = rc.spec.replicas if rc.spec.replicas is not None else 1
    try:
        old = [p.metadata.name for p in _owned_pods(client, namespace, rc) if p.metadata and p.metadata.name]
        if desired == 1 and old:
            log.info("replicationcontroller/%s has one replica: it is briefly without a Ready pod", name)
        for number, pod_name in enumerate(old, 1):
            if stopping():
                return RolloutResult("ReplicationController", name, False, False, "stopped before the end")
            log.info("replicationcontroller/%s: replacing pod %s (%d of %d)", name, pod_name, number, len(old))
            try:
                client.delete(Pod, pod_name, namespace=namespace)
            except ApiError as error:
                if not is_not_found(error):
                    raise CertkeeperError(f"cannot delete pod {pod_name} ({api_error_text(error)})") from None
            deadline = time.monotonic() + timeout

            def back(pod_name: str = pod_name) -> bool:
                pods = _owned_pods(client, namespace, rc)
                ready = [p for p in pods if _ready(p) and p.metadata and p.metadata.name != pod_name]
                return len(ready) >= desired

            while not back():
                if time.monotonic() > deadline:
                    return RolloutResult(
                        "ReplicationController",
                        name,
                        False,
                        False,
                        f"replicationcontroller/{name}: no Ready replacement for pod {pod_name} "
                        f"within {timeout:.0f} s; stopped replacing pods",
                    )
                if stopping():
                    return RolloutResult("ReplicationController", name, False, False, "stopped before the end")
                time.sleep(POLL_S)
    except CertkeeperError as error:
        return RolloutResult("ReplicationController", name, False, False, f"replicationcontroller/{name}: {error}")
    return RolloutResult(
        "ReplicationController",
        name,
        True,
        False,
        f"replaced {len(old)} pod(s) of replicationcontroller/{name} one at a time",
    )


def restart_workload(client: Client, namespace: str, workload: Workload) -> RolloutResult:
    """Set restartedAt on the pod template, as ``kubectl rollout restart`` does."""
    resource = KINDS[workload.kind]
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}}
    try:
        client.patch(resource, workload.name, patch, namespace=namespace, patch_type=PatchType.MERGE)
    except ApiError as error:
        if is_not_found(error):
            message = f"{workload} not found in namespace {namespace}"
            return RolloutResult(workload.kind, workload.name, False, True, message)
        return RolloutResult(
            workload.kind,
            workload.name,
            False,
            False,
            f"cannot restart {workload} ({error.status.code} {error.status.reason})",
        )
    except Exception as error:
        return RolloutResult(workload.kind, workload.name, False, False, f"cannot restart {workload}: {error}")
    return RolloutResult(workload.kind, workload.name, True, False, f"restarted {workload} (restartedAt {now})")
