"""What every store shares: the stored certificate value and the never-worse rule."""

from __future__ import annotations

import datetime
import threading
import warnings
from dataclasses import dataclass, field
from typing import Any, Protocol

from certkeeper.crypto import cert_info, key_matches_cert
from certkeeper.errors import CertkeeperError
from certkeeper.model import CertInfo, IssuedCert

# warnings.catch_warnings changes process-wide state: one parse at a time may hold it.
_STRICT = threading.Lock()


@dataclass(frozen=True)
class StoredCert:
    """A certificate as a store holds it. ``problem`` says why it is unusable, if it is."""

    key_pem: bytes
    cert_pem: bytes
    chain_pem: bytes
    info: CertInfo | None
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None
    meta_problem: str | None = None  # meta.json unreadable or of the wrong shape (the certificate may be fine)

    def __repr__(self) -> str:
        return f"StoredCert(info={self.info!r}, problem={self.problem!r})"

    @property
    def usable(self) -> bool:
        return self.info is not None and not self.problem

    @classmethod
    def parse(cls, key_pem: bytes, fullchain_or_cert: bytes, chain_pem: bytes, meta: dict[str, Any]) -> StoredCert:
        """Read what a store holds; garbage gives a StoredCert with ``problem`` set, never an exception."""
        try:
            # cryptography only warns about some damage (a negative serial): here it is a problem.
            with _STRICT, warnings.catch_warnings():
                warnings.simplefilter("error")
                return cls._parse(key_pem, fullchain_or_cert, chain_pem, meta)
        except CertkeeperError as error:
            return cls(key_pem, fullchain_or_cert, chain_pem, None, meta, f"unreadable: {error}")
        except Exception as error:  # any damage (bad version, duplicate extension...) is a problem
            reason = str(error).splitlines()[0][:200] if str(error) else type(error).__name__
            return cls(key_pem, fullchain_or_cert, chain_pem, None, meta, f"unreadable: {reason}")

    @classmethod
    def _parse(cls, key_pem: bytes, fullchain_or_cert: bytes, chain_pem: bytes, meta: dict[str, Any]) -> StoredCert:
        from certkeeper.crypto import split_pem_chain

        parts = split_pem_chain(fullchain_or_cert)
        if not parts:
            raise CertkeeperError("no certificate in it")
        cert_pem = parts[0]
        chain = chain_pem or b"".join(parts[1:])
        info = cert_info(cert_pem)
        if not key_matches_cert(key_pem, cert_pem):
            return cls(key_pem, cert_pem, chain, info, meta, "the private key does not match the certificate")
        return cls(key_pem, cert_pem, chain, info, meta)

    @property
    def fullchain_pem(self) -> bytes:
        return self.cert_pem + self.chain_pem


def check_replacement(new: IssuedCert, names: tuple[str, ...], old: StoredCert | None) -> None:
    """Refuse to store a certificate that is worse than nothing or than what is stored."""
    now = datetime.datetime.now(datetime.UTC)
    if not key_matches_cert(new.key_pem, new.cert_pem):
        raise CertkeeperError("refusing to store a certificate whose key does not match it")
    if not new.info.not_before <= now + datetime.timedelta(minutes=5) or new.info.not_after <= now:
        raise CertkeeperError("refusing to store a certificate that is not valid now")
    missing = set(names) - set(new.info.names)
    if missing:
        raise CertkeeperError(f"refusing to store a certificate that lacks {', '.join(sorted(missing))}")
    usable_old = old is not None and old.info is not None and old.problem is None and old.info.not_after > now
    if (
        usable_old
        and old
        and old.info
        and (
            new.info.not_after < old.info.not_after
            and set(old.info.names) >= set(new.info.names)
            and not (set(names) - set(old.info.names))
        )
    ):
        # The stored one covers the same names for longer: keep it.
        raise CertkeeperError("refusing to replace a certificate with one that expires sooner")


class Lock(Protocol):
    def release(self) -> None: ...


class _NoLock:
    def release(self) -> None:
        pass


class StoreDefaults:
    """What a store without files needs for crash recovery: nothing on disk to lock, tidy or probe.

    A store that does not persist a pending certificate keeps it in memory, which serves a
    long-running process (``certkeeper run``) that retries the save in its next loop.
    """

    def __init__(self) -> None:
        self._pending: dict[str, IssuedCert] = {}

    def lock(self, lineage: str) -> Lock | None:
        return _NoLock()

    def account_lock(self, directory_url: str) -> Lock:
        return _NoLock()

    def tidy(self, lineage: str) -> list[str]:
        return []

    def check_writable(self, lineage: str) -> None:
        pass

    def save_pending(self, lineage: str, issued: IssuedCert) -> str:
        self._pending[lineage] = issued
        return "memory"

    def load_pending(self, lineage: str) -> IssuedCert | None:
        return self._pending.get(lineage)

    def drop_pending(self, lineage: str) -> None:
        self._pending.pop(lineage, None)

    def rewrite_meta(self, lineage: str, meta: dict[str, Any]) -> None:
        pass

    def stage_state(self, lineage: str, state: dict[str, Any]) -> None:
        pass
