"""Tell the consumers of a new certificate: replace an RC's pods one at a time, restart workloads.

For a ReplicationController (the post's ``RC_NAMES``) each old pod is deleted in turn, and the next one
only once the RC is back to its desired number of Ready pods, so two or more replicas never drop to
zero Ready. Deployments, StatefulSets and DaemonSets get ``kubectl.kubernetes.io/restartedAt`` on their
pod template, which is what ``kubectl rollout restart`` does; their controllers roll them safely.
A missing workload is reported, not fatal.

``roll`` is the one entry point (``certkeeper run`` and ``certkeeper controller``). It keeps a
``RolloutRecord`` on the Secret: which certificate (a digest of its data) is being rolled out, since
when, which targets are done, and for an RC begun the pods that were there before the change. A retry
after a partial failure, or a restart after a kill, restarts only the targets not done yet, and within
an RC only those pods: every pod is replaced once per change, however often certkeeper is interrupted.
"""

from __future__ import annotations

import datetime
import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

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
# A failed rollout is tried again after these delays (then every 15 min), not at the next daily check.
RETRY_S = (10, 30, 60, 300, 900)


@dataclass(frozen=True)
class RolloutResult:
    kind: str
    name: str
    ok: bool
    missing: bool
    message: str


# -- the record ------------------------------------------------------------------------------------


def _stamp(when: datetime.datetime) -> str:
    return when.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: Any) -> datetime.datetime | None:
    if not isinstance(text, str):
        return None
    try:
        when = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return when if when.tzinfo is not None else None


@dataclass(frozen=True)
class RolloutRecord:
    """What is being rolled out (``digest`` of the Secret's data), since when, and what is done.

    ``changed_at`` (whole seconds) is when the record was made, after the data was written; it is also
    the ``restartedAt`` value workloads get, so setting it again after an interruption changes nothing.
    ``rolled`` maps ``Kind/name`` to when that target was done; ``pods`` maps an RC begun but not done
    to the pods it had before the change, the only ones to replace. Pod names, not creation times: the
    API server's and certkeeper's clocks need not agree, and a pod a killed attempt created is never
    one of them."""

    digest: str
    changed_at: datetime.datetime
    rolled: dict[str, str] = field(default_factory=dict)
    pods: dict[str, list[str]] = field(default_factory=dict)

    def to_json(self) -> str:
        body = {"digest": self.digest, "changedAt": _stamp(self.changed_at), "rolled": self.rolled, "pods": self.pods}
        return json.dumps(body, sort_keys=True, separators=(",", ":"))

    def done(self, key: str, when: datetime.datetime) -> RolloutRecord:
        pods = {k: v for k, v in self.pods.items() if k != key}
        return RolloutRecord(self.digest, self.changed_at, {**self.rolled, key: _stamp(when)}, pods)

    def with_pods(self, key: str, names: list[str]) -> RolloutRecord:
        return RolloutRecord(self.digest, self.changed_at, dict(self.rolled), {**self.pods, key: list(names)})

    @staticmethod
    def parse(text: str) -> RolloutRecord:
        """The record, or ``ValueError`` naming the first thing wrong."""
        try:
            body = json.loads(text)
        except ValueError:
            raise ValueError("not JSON") from None
        if not isinstance(body, dict):
            raise ValueError(f"not an object ({type(body).__name__})")
        digest = body.get("digest")
        if not isinstance(digest, str) or not digest:
            raise ValueError("'digest' is not a digest")
        changed_at = _parse_time(body.get("changedAt"))
        if changed_at is None:
            raise ValueError(f"'changedAt' is not a time ({str(body.get('changedAt'))[:30]!r})")
        rolled = body.get("rolled", {})
        if not isinstance(rolled, dict) or not all(
            isinstance(k, str) and _parse_time(v) is not None for k, v in rolled.items()
        ):
            raise ValueError("'rolled' is not a map of target to time")
        pods = body.get("pods", {})
        if not isinstance(pods, dict) or not all(
            isinstance(k, str) and isinstance(v, list) and all(isinstance(n, str) for n in v) for k, v in pods.items()
        ):
            raise ValueError("'pods' is not a map of target to pod names")
        return RolloutRecord(digest, changed_at, dict(rolled), {k: list(v) for k, v in pods.items()})


@dataclass(frozen=True)
class RolloutBasis:
    """The Secret as the rollout starts: what it holds, and its record."""

    where: str  # "Secret ns/name", for messages
    digest: str
    record: str | None


class RecordKeeper(Protocol):
    """Where the record lives (``SecretStore``): read fresh from the Secret, written as one annotation."""

    def rollout_basis(self) -> RolloutBasis: ...

    def write_rollout_record(self, text: str) -> None: ...


def _record_for(basis: RolloutBasis) -> tuple[RolloutRecord, bool]:
    """The record to go on with (and whether it is new): the stored one if it is for this data."""
    if basis.record:
        try:
            record = RolloutRecord.parse(basis.record)
        except ValueError as error:
            log.warning(
                "the rollout record on %s is malformed (%s): reset; its targets are restarted again",
                basis.where,
                error,
            )
        else:
            if record.digest == basis.digest:
                return record, False
    return RolloutRecord(basis.digest, datetime.datetime.now(datetime.UTC).replace(microsecond=0)), True


def roll(
    client: Client,
    namespace: str,
    targets: Sequence[tuple[str, str]],
    keeper: RecordKeeper,
    *,
    timeout: float = 300.0,
    stopping: Callable[[], bool] = lambda: False,
) -> list[RolloutResult]:
    """Restart the ``(kind, name)`` targets not yet done for the certificate the Secret holds.

    Returns a result per target tried; targets done already (by an interrupted or partly failed earlier
    attempt) are skipped and only logged. Each one done is recorded at once."""
    if not targets:
        return []
    try:
        basis = keeper.rollout_basis()
    except CertkeeperError as error:  # the API down, say: nothing restarted, all tried again later
        return [RolloutResult(kind, name, False, False, f"{kind.lower()}/{name}: {error}") for kind, name in targets]
    record, fresh = _record_for(basis)
    if fresh:
        _save(keeper, record)
    elif record.rolled:
        log.info(
            "resuming the rollout of the certificate stored at %s: %s done already",
            _stamp(record.changed_at),
            ", ".join(sorted(record.rolled)),
        )
    results: list[RolloutResult] = []
    for kind, name in targets:
        key = f"{kind}/{name}"
        if key in record.rolled:
            log.info("%s/%s: restarted for this certificate already (at %s)", kind.lower(), name, record.rolled[key])
            continue
        if stopping():
            results.append(RolloutResult(kind, name, False, False, f"{kind.lower()}/{name}: stopped before it"))
            continue
        try:
            if kind == "ReplicationController":

                def note(names: list[str], key: str = key) -> None:
                    nonlocal record
                    record = record.with_pods(key, names)
                    _save(keeper, record)  # before the first deletion: a resume replaces only these

                before = record.pods.get(key)
                result = restart_rc(client, namespace, name, timeout, stopping, only=before, before=note)
            else:
                result = restart_workload(client, namespace, Workload(kind, name), changed_at=record.changed_at)
        except Exception as error:  # e.g. the API went away mid-rollout: report it, try again later
            message = f"{kind.lower()}/{name}: rollout interrupted ({api_error_text(error)})"
            result = RolloutResult(kind, name, False, False, message)
        results.append(result)
        if result.ok:
            record = record.done(key, datetime.datetime.now(datetime.UTC))
            _save(keeper, record)
    return results


def _save(keeper: RecordKeeper, record: RolloutRecord) -> None:
    try:
        keeper.write_rollout_record(record.to_json())
    except CertkeeperError as error:  # kept in memory by the keeper; the rollout goes on
        log.warning("%s", error)


# -- ReplicationController: pods one at a time -----------------------------------------------------


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
    client: Client,
    namespace: str,
    name: str,
    timeout: float = 300.0,
    stopping: Callable[[], bool] = lambda: False,
    *,
    only: Sequence[str] | None = None,
    before: Callable[[list[str]], None] = lambda names: None,
) -> RolloutResult:
    """Delete the RC's pods one by one, each time waiting until it has its desired Ready pods again.

    ``before`` is told the pods to replace before the first is deleted; ``only``, what an interrupted
    earlier attempt was told: the pods not among them were created since and are kept."""
    what = f"replicationcontroller/{name}"
    try:
        rc = client.get(ReplicationController, name, namespace=namespace)
    except ApiError as error:
        if is_not_found(error):
            return RolloutResult(
                "ReplicationController", name, False, True, f"{what} not found in namespace {namespace}"
            )
        message = f"cannot read {what} ({error.status.code} {error.status.reason})"
        return RolloutResult("ReplicationController", name, False, False, message)
    except Exception as error:
        return RolloutResult("ReplicationController", name, False, False, f"cannot read {what}: {error}")
    assert rc.spec is not None
    desired = rc.spec.replicas if rc.spec.replicas is not None else 1

    def failed(message: str) -> RolloutResult:
        return RolloutResult("ReplicationController", name, False, False, message)

    def wait_until(enough: Callable[[], bool], why: str) -> RolloutResult | None:
        deadline = time.monotonic() + timeout
        while not enough():
            if time.monotonic() > deadline:
                return failed(f"{what}: {why} within {timeout:.0f} s; stopped replacing pods")
            if stopping():
                return failed(f"{what}: stopped before the end")
            time.sleep(POLL_S)
        return None

    try:
        pods = _owned_pods(client, namespace, rc)
        names = [p.metadata.name for p in pods if p.metadata and p.metadata.name]
        old = names if only is None else [n for n in names if n in only]
        if only is None:
            before(old)
        kept = len(names) - len(old)
        if kept:
            log.info("%s: %d pod(s) already created after the change are not replaced again", what, kept)
        if only is not None:
            # A resume: the replacement of the pod an earlier attempt deleted may not exist or be Ready
            # yet (the API or the controller-manager was down): the next pod goes only once it is.
            stuck = wait_until(
                lambda: sum(1 for p in _owned_pods(client, namespace, rc) if _ready(p)) >= desired,
                f"fewer than {desired} Ready pod(s)",
            )
            if stuck is not None:
                return stuck
        if desired == 1 and old:
            log.info("%s has one replica: it is briefly without a Ready pod", what)
        for number, pod_name in enumerate(old, 1):
            if stopping():
                return failed(f"{what}: stopped before the end")
            log.info("%s: replacing pod %s (%d of %d)", what, pod_name, number, len(old))
            try:
                client.delete(Pod, pod_name, namespace=namespace)
            except ApiError as error:
                if not is_not_found(error):
                    raise CertkeeperError(f"cannot delete pod {pod_name} ({api_error_text(error)})") from None

            def back(pod_name: str = pod_name) -> bool:
                pods = _owned_pods(client, namespace, rc)
                ready = [p for p in pods if _ready(p) and p.metadata and p.metadata.name != pod_name]
                return len(ready) >= desired

            stuck = wait_until(back, f"no Ready replacement for pod {pod_name}")
            if stuck is not None:
                return stuck
    except CertkeeperError as error:
        return failed(f"{what}: {error}")
    done = f"replaced {len(old)} pod(s) of {what} one at a time"
    if kept:
        done += f" ({kept} before an interruption)"
    return RolloutResult("ReplicationController", name, True, False, done)


# -- Deployments, StatefulSets, DaemonSets: restartedAt --------------------------------------------


def _restarted_since(client: Client, namespace: str, workload: Workload, changed_at: datetime.datetime) -> str:
    """The workload's restartedAt when it is not earlier than the change (restarted for it), else ""."""
    try:
        found = client.get(KINDS[workload.kind], workload.name, namespace=namespace)
    except Exception:  # no get permission (the controller's RBAC has patch only), or missing: patch decides
        return ""
    template = found.spec.template if found.spec is not None else None
    meta = template.metadata if template is not None else None
    value = ((meta.annotations if meta is not None else None) or {}).get(RESTARTED_AT, "")
    when = _parse_time(value)
    return value if when is not None and when >= changed_at else ""


def restart_workload(
    client: Client, namespace: str, workload: Workload, *, changed_at: datetime.datetime | None = None
) -> RolloutResult:
    """Set restartedAt on the pod template, as ``kubectl rollout restart`` does.

    With ``changed_at`` the value is the change's time: set again after an interruption it changes
    nothing (no second restart), and a restartedAt at or after it (set by anyone) is left alone."""
    if changed_at is not None:
        already = _restarted_since(client, namespace, workload, changed_at)
        if already:
            return RolloutResult(
                workload.kind, workload.name, True, False, f"{workload} restarted after the change already ({already})"
            )
    resource = KINDS[workload.kind]
    value = _stamp(changed_at or datetime.datetime.now(datetime.UTC))
    patch = {"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: value}}}}}
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
    return RolloutResult(workload.kind, workload.name, True, False, f"restarted {workload} (restartedAt {value})")
