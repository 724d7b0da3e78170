"""What every store shares: the stored certificate value and the never-worse rule."""

from __future__ import annotations

import datetime
from dataclasses import dataclass, field
from typing import Any

from certkeeper.crypto import cert_info, key_matches_cert
from certkeeper.errors import CertkeeperError
from certkeeper.model import CertInfo, IssuedCert


@dataclass(frozen=True)
class StoredCert:
    """A certificate as a store holds it. ``problem`` says why it is unusable, if it is."""

    key_pem: bytes
    cert_pem: bytes
    chain_pem: bytes
    info: CertInfo | None
    meta: dict[str, Any] = field(default_factory=dict)
    problem: str | None = None

    def __repr__(self) -> str:
        return f"StoredCert(info={self.info!r}, problem={self.problem!r})"

    @classmethod
    def parse(cls, key_pem: bytes, fullchain_or_cert: bytes, chain_pem: bytes, meta: dict[str, Any]) -> StoredCert:
        """Read what a store holds; garbage gives a StoredCert with ``problem`` set, never an exception."""
        from certkeeper.crypto import split_pem_chain

        try:
            parts = split_pem_chain(fullchain_or_cert)
            if not parts:
                raise CertkeeperError("no certificate in it")
            cert_pem = parts[0]
            chain = chain_pem or b"".join(parts[1:])
            info = cert_info(cert_pem)
            if not key_matches_cert(key_pem, cert_pem):
                return cls(key_pem, cert_pem, chain, info, meta, "the private key does not match the certificate")
            return cls(key_pem, cert_pem, chain, info, meta)
        except CertkeeperError as error:
            return cls(key_pem, fullchain_or_cert, chain_pem, None, meta, f"unreadable: {error}")
        except ValueError as error:
            return cls(key_pem, fullchain_or_cert, chain_pem, None, meta, f"unreadable: {error}")

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
