"""A ``CertStore`` on one Kubernetes Secret, in the seed's layout, plus the ACME account in its own Secret.

Data keys: ``proxycert`` (full chain), ``proxykey``, ``dhparam`` (RFC 7919 ffdhe2048), and the same
certificate and key as ``tls.crt`` / ``tls.key`` (and ``tls.pem``: chain then key, as later seed images
wrote) so that an Ingress can use the Secret too. Other data keys (an ``htpasswd``, say) are kept.

The engine calls these methods from worker threads; a synchronous lightkube ``Client`` is safe there.
Every API failure becomes a one-line ``CertkeeperError``: it never carries Secret contents.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import httpx2
from lightkube import Client
from lightkube.core.exceptions import ApiError
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.core_v1 import Secret
from lightkube.types import PatchType

from certkeeper.acme.account import Account
from certkeeper.errors import CertkeeperError, NotRecorded
from certkeeper.kube.api import KubeApiError, call_api, fail, is_not_found
from certkeeper.kube.names import companion_name
from certkeeper.kube.rollout import RolloutBasis
from certkeeper.model import IssuedCert, PendingOrder
from certkeeper.stores.base import StoredCert, StoreDefaults

log = logging.getLogger(__name__)

# RFC 7919 ffdhe2048: a standard, well-audited group. Nothing is generated per save.
FFDHE2048_PEM = b"""-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
"""

PREFIX = "certkeeper.io/"
MANAGED_BY = {"app.kubernetes.io/managed-by": "certkeeper"}
CONFLICT_RETRIES = 5
ROLLOUT_RECORD = PREFIX + "rollout-record"  # a kube.rollout.RolloutRecord: what is restarted for which data
CERT_KEYS = ("proxycert", "proxykey", "dhparam", "tls.crt", "tls.key", "tls.pem")
# What a Certificate's ``keys`` writes: the seed's layout (``certkeeper run``), or what an Ingress reads.
KEY_SETS = {"seed": CERT_KEYS, "tls": ("tls.crt", "tls.key")}


def data_digest(b64_chain: str) -> str:
    """A short digest of the certificate data as stored (base64 text): an edit by anyone changes it."""
    return hashlib.sha256(b64_chain.encode()).hexdigest()[:16] if b64_chain else ""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: str | None) -> bytes:
    if not text:
        return b""
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return b""


def digest_of(secret: Secret | None) -> str:
    """What identifies the certificate data in a Secret (every key certkeeper writes), to tell others'
    edits from ours: garbage in ``tls.crt`` with ``proxycert`` still good is an edit too."""
    if secret is None or not secret.data:
        return ""
    return "|".join(secret.data.get(key) or "" for key in CERT_KEYS)


class SecretStore(StoreDefaults):
    def __init__(
        self,
        client: Client,
        namespace: str,
        secret_name: str,
        *,
        secret_type: str | None = None,
        account_secret_name: str | None = None,
        keys: str = "seed",
        read_once: bool = False,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        rolls_out: bool = True,
    ) -> None:
        super().__init__()
        self.client = client
        self.keys = KEY_SETS[keys]
        # The controller makes a store per reconcile: it reads each Secret once, until it writes it.
        self.read_once = read_once
        self._read: dict[str, Secret | None] = {}
        self.labels = dict(labels or {})  # added to the Secret on every write (a Certificate's secretTemplate)
        self.annotations = dict(annotations or {})
        self.namespace = namespace
        self.secret_name = secret_name
        self.secret_type = secret_type or "kubernetes.io/tls"
        self.account_secret_name = account_secret_name or companion_name(secret_name, "-acme-account")
        self._state: dict[str, Any] = {}
        self._staged_state: dict[str, Any] | None = None  # written with the next certificate (stage_state)
        self.last_digest = ""  # proxycert of the last Secret seen or written by us
        self.writing_digest = ""  # of the data being written now (its watch event can come before the answer)
        self.rollout_pending = False  # stored, but its consumers not yet restarted (e.g. a crash between)
        self.rolls_out = rolls_out  # False: nothing to restart, so a new certificate is written as rolled out
        self._unsaved_rollout: str | None = None  # the rollout record, while it cannot be written
        # An account registered whose Secret could not be written: reused, never registered again.
        self._unsaved_account: Account | None = None
        self.damaged_keys: list[str] = []
        # ``certkeeper run``: whether its Lease is surely held; an order is recorded (so placed) only then.
        self.leading: Callable[[], bool] | None = None
        self._said_no_patch = False  # keys not holding what proxycert/proxykey say (see repair)

    # -- plumbing --------------------------------------------------------------------------------

    def _get(self, name: str) -> Secret | None:
        if name in self._read:
            return self._read[name]

        def get() -> Secret | None:
            try:
                return self.client.get(Secret, name, namespace=self.namespace)
            except ApiError as error:
                if is_not_found(error):
                    return None
                raise

        found = call_api(f"read Secret {self.namespace}/{name}", get)
        if self.read_once:
            self._read[name] = found
        return found

    def get(self) -> Secret | None:
        """The Secret as it is now (None: it does not exist)."""
        return self._get(self.secret_name)

    @property
    def state(self) -> dict[str, Any]:
        """The renewal state last loaded or saved (next check, renew_at, failures)."""
        return dict(self._state)

    def location(self, lineage: str) -> str:
        return f"secret/{self.namespace}/{self.secret_name}"

    # -- certificate -----------------------------------------------------------------------------

    def load(self, lineage: str) -> StoredCert | None:
        secret = self._get(self.secret_name)
        if secret is None:
            self.last_digest = ""
            return None
        self.last_digest = digest_of(secret)
        data = secret.data or {}
        annotations = (secret.metadata.annotations if secret.metadata else None) or {}
        meta: dict[str, Any] = {}
        try:
            meta = json.loads(annotations.get(PREFIX + "meta", "{}"))
        except ValueError:
            meta = {}
        self._state = self._parse_state(annotations)
        self.rollout_pending = annotations.get(PREFIX + "rollout") == "pending"
        chain = _unb64(data.get("proxycert")) or _unb64(data.get("tls.crt"))
        key = _unb64(data.get("proxykey")) or _unb64(data.get("tls.key"))
        self.damaged_keys = []
        if not chain or not key:
            return StoredCert(key, chain, b"", None, meta, "the Secret has no proxycert/proxykey")
        stored = StoredCert.parse(key, chain, b"", meta if isinstance(meta, dict) else {})
        if stored.usable:
            expected = self._values(chain, key)
            self.damaged_keys = [k for k in self.keys if _unb64(data.get(k)) != expected[k]]
        return stored

    @staticmethod
    def _values(fullchain: bytes, key_pem: bytes) -> dict[str, bytes]:
        return {
            "proxycert": fullchain,
            "proxykey": key_pem,
            "dhparam": FFDHE2048_PEM,
            "tls.crt": fullchain,
            "tls.key": key_pem,
            "tls.pem": fullchain + key_pem,
        }

    def repair(self) -> list[str]:
        """Rewrite the keys that do not hold the good certificate and key the Secret has (no new order).

        Returns the keys rewritten. Consumers of the good keys (``proxycert``) see no change."""
        stored = self.load(self.secret_name)
        secret = self._get(self.secret_name)
        damaged = list(self.damaged_keys)
        if secret is None or stored is None or not stored.usable or not damaged:
            return []
        data = secret.data or {}
        chain = _unb64(data.get("proxycert")) or _unb64(data.get("tls.crt"))
        key = _unb64(data.get("proxykey")) or _unb64(data.get("tls.key"))
        expected = self._values(chain, key)
        patch = {
            "metadata": {"resourceVersion": secret.metadata.resourceVersion if secret.metadata else None},
            "data": {k: _b64(expected[k]) for k in damaged},
        }

        def write() -> None:
            self._read.pop(self.secret_name, None)
            written = self.client.patch(
                Secret, self.secret_name, patch, namespace=self.namespace, patch_type=PatchType.MERGE
            )
            self.last_digest = digest_of(written)

        call_api(f"repair {', '.join(damaged)} in Secret {self.namespace}/{self.secret_name}", write)
        self.damaged_keys = []
        return damaged

    def _body(self, issued: IssuedCert, meta: dict[str, Any], existing: Secret | None) -> Secret:
        info = issued.info
        data = dict((existing.data or {}) if existing is not None else {})
        values = self._values(issued.fullchain_pem, issued.key_pem)
        data.update({key: _b64(values[key]) for key in self.keys})
        old_meta = existing.metadata if existing is not None and existing.metadata is not None else ObjectMeta()
        labels = dict(old_meta.labels or {})
        labels.update(self.labels)
        labels.update(MANAGED_BY)
        domain = info.names[0].replace("*.", "wildcard.", 1)  # a label value starts with a letter or digit
        if len(domain) <= 63:
            labels[PREFIX + "domain"] = domain
        annotations = dict(old_meta.annotations or {})
        annotations.update(self.annotations)
        annotations.update(
            {
                PREFIX + "names": " ".join(info.names),
                PREFIX + "not-after": info.not_after.isoformat(),
                PREFIX + "not-before": info.not_before.isoformat(),
                PREFIX + "issuer": info.issuer,
                PREFIX + "serial": info.serial,
                PREFIX + "fingerprint": info.fingerprint,
                PREFIX + "meta": json.dumps(meta, sort_keys=True, default=str),
                PREFIX + "rollout": "pending" if self.rolls_out else "done",
                # What was written: the controller trusts a Secret at start-up only while this matches.
                PREFIX + "data-digest": data_digest(data.get("tls.crt") or data.get("proxycert") or ""),
            }
        )
        if self._staged_state is not None:  # the renewal state after this certificate: one write, not two
            annotations[PREFIX + "state"] = json.dumps(self._staged_state, sort_keys=True, default=str)
        metadata = ObjectMeta(
            name=self.secret_name,
            namespace=self.namespace,
            labels=labels,
            annotations=annotations,
            resourceVersion=old_meta.resourceVersion if existing is not None else None,
        )
        # The type of an existing Secret is immutable: keep it.
        kind = existing.type if existing is not None and existing.type else self.secret_type
        return Secret(metadata=metadata, type=kind, data=data)

    def save(self, lineage: str, issued: IssuedCert, meta: dict[str, Any]) -> bool:
        """Create or replace the Secret; False (nothing written) when it already holds this certificate."""
        for attempt in range(CONFLICT_RETRIES):
            existing = self._get(self.secret_name)
            if existing is not None:
                current = self.load(lineage)
                if (
                    current is not None
                    and current.info is not None
                    and not current.problem
                    and current.info.fingerprint == issued.info.fingerprint
                ):
                    return False
            body = self._body(issued, meta, existing)
            self.writing_digest = digest_of(body)
            try:
                self._read.pop(self.secret_name, None)
                written = self.client.create(body) if existing is None else self.client.replace(body)
            except ApiError as error:
                # 409: someone else wrote it (or created it) meanwhile; read again and retry.
                if error.status.code == 409 and attempt + 1 < CONFLICT_RETRIES:
                    time.sleep(0.1 * (attempt + 1))
                    continue
                fail(f"write Secret {self.namespace}/{self.secret_name}", error)
            except (httpx2.HTTPError, OSError) as error:
                fail(f"write Secret {self.namespace}/{self.secret_name}", error)
            else:
                self.last_digest = digest_of(written)
                self.rollout_pending = self.rolls_out
                if self._staged_state is not None:
                    self._state, self._staged_state = self._staged_state, None
                return True
        raise CertkeeperError(f"cannot write Secret {self.namespace}/{self.secret_name}: it kept changing (409)")

    # -- renewal state: an annotation on the Secret (in memory while the Secret does not exist) --

    @staticmethod
    def _parse_state(annotations: dict[str, str]) -> dict[str, Any]:
        try:
            state = json.loads(annotations.get(PREFIX + "state", "{}"))
        except ValueError:
            return {}
        return state if isinstance(state, dict) else {}

    def seed_state(self, state: dict[str, Any]) -> None:
        """The state to use while the Secret holds none (the controller's is in the Certificate's status)."""
        self._state = dict(state)

    def load_state(self, lineage: str) -> dict[str, Any]:
        secret = self._get(self.secret_name)
        if secret is not None:
            annotations = (secret.metadata.annotations if secret.metadata else None) or {}
            if PREFIX + "state" in annotations:
                self._state = self._parse_state(annotations)
        return dict(self._state)

    def stage_state(self, lineage: str, state: dict[str, Any]) -> None:
        self._staged_state = dict(state)

    def save_state(self, lineage: str, state: dict[str, Any]) -> None:
        self._staged_state = None
        if state == self._state:
            return
        self._state = dict(state)
        patch = {"metadata": {"annotations": {PREFIX + "state": json.dumps(state, sort_keys=True, default=str)}}}

        def write() -> None:
            try:
                self._read.pop(self.secret_name, None)
                self.client.patch(Secret, self.secret_name, patch, namespace=self.namespace, patch_type=PatchType.MERGE)
            except ApiError as error:
                if not is_not_found(error):  # no Secret yet: the state stays in memory
                    raise

        try:
            call_api(f"record the renewal state on Secret {self.namespace}/{self.secret_name}", write)
        except KubeApiError as error:
            if error.code != 403:
                raise
            # No secrets:patch: the state stays in memory; a stored certificate is still a success.
            if not self._said_no_patch:
                log.warning("%s; the renewal state is kept in memory only", error)
                self._said_no_patch = True

    def rollout_basis(self) -> RolloutBasis:
        """The Secret read afresh (a cached read may predate the record's last write)."""

        def get() -> Secret | None:
            try:
                return self.client.get(Secret, self.secret_name, namespace=self.namespace)
            except ApiError as error:
                if is_not_found(error):
                    return None
                raise

        secret = call_api(f"read Secret {self.namespace}/{self.secret_name}", get)
        meta = secret.metadata if secret is not None and secret.metadata is not None else ObjectMeta()
        data = (secret.data if secret is not None else None) or {}
        return RolloutBasis(
            where=f"Secret {self.namespace}/{self.secret_name}",
            digest=data_digest(data.get("tls.crt") or data.get("proxycert") or ""),
            record=self._unsaved_rollout or (meta.annotations or {}).get(ROLLOUT_RECORD),
        )

    def write_rollout_record(self, text: str) -> None:
        """Record which targets are restarted; kept in memory (with a warning) when it cannot be written."""
        patch = {"metadata": {"annotations": {ROLLOUT_RECORD: text}}}

        def write() -> None:
            self._read.pop(self.secret_name, None)
            self.client.patch(Secret, self.secret_name, patch, namespace=self.namespace, patch_type=PatchType.MERGE)

        try:
            call_api(f"record the rollout's progress on Secret {self.namespace}/{self.secret_name}", write)
        except KubeApiError as error:
            self._unsaved_rollout = text
            if error.code != 403:
                raise CertkeeperError(f"{error.problem}; kept in memory only", error.fix) from None
            if not self._said_no_patch:  # no secrets:patch: said once, like the renewal state
                log.warning("%s; the rollout's progress is kept in memory only", error)
                self._said_no_patch = True
            return
        self._unsaved_rollout = None

    def mark_rolled(self) -> None:
        """Record that the consumers of the stored certificate were restarted."""
        patch = {"metadata": {"annotations": {PREFIX + "rollout": "done"}}}

        def write() -> None:
            self._read.pop(self.secret_name, None)
            self.client.patch(Secret, self.secret_name, patch, namespace=self.namespace, patch_type=PatchType.MERGE)

        call_api(f"record the rollout on Secret {self.namespace}/{self.secret_name}", write)
        self.rollout_pending = False

    # -- the order in flight: its URL and key in a companion Secret, so another process resumes it --

    @property
    def order_secret_name(self) -> str:
        return companion_name(self.secret_name, "-order")

    def load_order(self, lineage: str, *, fresh: bool = False) -> PendingOrder | None:
        secret = self._get(self.order_secret_name)  # no cache of its own to bypass: ``fresh`` changes nothing
        if secret is None or not secret.data or secret.metadata is None:
            return None
        annotations = secret.metadata.annotations or {}
        url = annotations.get(PREFIX + "order-url", "")
        key_pem = _unb64(secret.data.get("key.pem"))
        names = tuple(annotations.get(PREFIX + "names", "").split())
        # No URL: the key and names recorded before the newOrder request (engine: found in the CA's list).
        return PendingOrder(url, names, key_pem) if key_pem and names else None

    def save_order(self, lineage: str, pending: PendingOrder) -> None:
        if not pending.url and self.leading is not None and not self.leading():
            raise NotRecorded(
                f"the Lease for Secret {self.namespace}/{self.secret_name} may have passed to another instance"
            )
        try:
            self._write_key_secret(
                self.order_secret_name,
                {PREFIX + "order-url": pending.url, PREFIX + "names": " ".join(pending.names)},
                pending.key_pem,
                f"record the order in flight in Secret {self.namespace}/{self.order_secret_name}",
            )
        except KubeApiError as error:
            if error.code is None or error.code == 429 or error.code >= 500:  # no answer, or not now
                raise NotRecorded(error.problem, error.fix) from None
            raise

    def clear_order(self, lineage: str) -> None:
        def delete() -> None:
            try:
                self._read.pop(self.order_secret_name, None)
                self.client.delete(Secret, self.order_secret_name, namespace=self.namespace)
            except ApiError as error:
                if not is_not_found(error):
                    raise

        call_api(f"delete Secret {self.namespace}/{self.order_secret_name}", delete)

    # -- ACME account ----------------------------------------------------------------------------

    def check_account_writable(self) -> None:
        """Before registering: the account Secret exists, or can be created here (a dry run).

        A namespace that does not exist or a missing ``secrets:create`` is found before the CA is asked
        for an account it could then not keep (each retry would register another)."""
        if self._get(self.account_secret_name) is not None:
            return
        body = Secret(
            metadata=ObjectMeta(name=self.account_secret_name, namespace=self.namespace, labels=dict(MANAGED_BY)),
            type="Opaque",
            data={},
        )
        try:
            self.client.create(body, dry_run=True)
        except ApiError as error:
            code = error.status.code
            message = error.status.message or ""
            if code == 404 and "namespace" in message.lower():
                raise CertkeeperError(
                    f'namespace "{self.namespace}" not found: no ACME account registered',
                    f"create it (kubectl create namespace {self.namespace}) or set NAMESPACE to an existing one",
                ) from None
            if code == 409:
                return  # created meanwhile
            fail(f"create Secret {self.namespace}/{self.account_secret_name} (the ACME account)", error)
        except (httpx2.HTTPError, OSError) as error:
            fail(f"create Secret {self.namespace}/{self.account_secret_name} (the ACME account)", error)

    # acme.account: the key is written before the CA is asked to register it (replicas share this Secret).
    key_before_registration = True

    def load_account(self, directory_url: str) -> Account | None:
        secret = self._get(self.account_secret_name)
        unsaved = self._unsaved_account
        if unsaved is not None and unsaved.url and unsaved.directory_url == directory_url:
            return unsaved  # registered, its Secret not written yet: reused, never registered again
        if secret is None or not secret.data:
            return unsaved if unsaved is not None and unsaved.directory_url == directory_url else None
        annotations = (secret.metadata.annotations if secret.metadata else None) or {}
        url = annotations.get(PREFIX + "account-url", "")
        key_pem = _unb64(secret.data.get("key.pem"))
        if annotations.get(PREFIX + "directory-url") != directory_url or not key_pem:
            return None
        # No URL: the key was kept and the registration's answer lost; the CA's lookup by key finds the account.
        return Account(directory_url=directory_url, url=url, key_pem=key_pem, verified=bool(url))

    def save_account(self, account: Account) -> None:
        self._unsaved_account = account  # until written: a failed write must not cost a second account
        self._write_key_secret(
            self.account_secret_name,
            {PREFIX + "account-url": account.url, PREFIX + "directory-url": account.directory_url},
            account.key_pem,
            f"write Secret {self.namespace}/{self.account_secret_name} (the ACME account)",
        )
        self._unsaved_account = None

    def _write_key_secret(self, name: str, annotations: dict[str, str], key_pem: bytes, what: str) -> None:
        """Create or replace a Secret holding one private key (``key.pem``) and its annotations.

        The account and the order in flight are each one key the CA knows: retried on a conflict (409)
        with a fresh read, never merged with what someone else wrote."""
        for attempt in range(CONFLICT_RETRIES):
            # Read first (cached once read or written), not created on a guess: a ResourceQuota charges a
            # create that then fails with 409 until it recounts, so guessing wrong fills a tight quota.
            existing = self._get(name)
            metadata = ObjectMeta(
                name=name,
                namespace=self.namespace,
                labels=dict(MANAGED_BY),
                annotations=annotations,
                resourceVersion=existing.metadata.resourceVersion if existing and existing.metadata else None,
            )
            body = Secret(metadata=metadata, type="Opaque", data={"key.pem": _b64(key_pem)})
            try:
                self._read.pop(name, None)  # the next read (a retry's, a later check's) sees the change
                written = self.client.create(body) if existing is None else self.client.replace(body)
                if self.read_once:  # what was written, with its resourceVersion: the order's URL needs no read
                    self._read[name] = written
                return
            except ApiError as error:
                if error.status.code == 409 and attempt + 1 < CONFLICT_RETRIES:
                    continue
                fail(what, error)
            except (httpx2.HTTPError, OSError) as error:
                fail(what, error)
        raise CertkeeperError(f"cannot {what}: it kept changing (409)")
