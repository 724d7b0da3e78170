"""Fallback CAs: when the first CA persistently refuses (rate limited, down, a policy refusal), the next one
in the list issues the certificate.

The certificate records which CA issued it (``issued_by_directory_url`` in meta.json) while its
``directory_url`` stays the first CA's, so the next renewal goes back to the first CA (and falls back
again only if it still refuses). The certificate's lock is held throughout: never two CAs ordering
the same certificate at once. A validation failure does not fall back: it would fail at every CA and
only burn the next one's limits.
"""

from __future__ import annotations

import datetime
import logging
import threading
from collections.abc import Sequence

from certkeeper.acme import AccountStore, AcmeClient, ensure_account
from certkeeper.acme.network import Unreachable
from certkeeper.errors import CAError, CertkeeperError
from certkeeper.model import CertInfo, IssuedCert
from certkeeper.solvers.base import Solvers
from certkeeper.spec import CertSpec, IssuerSpec

log = logging.getLogger(__name__)
# Refusals another CA may well not share: its limits, its availability, its policy.
FALLBACK_PROBLEMS = frozenset({"rateLimited", "serverInternal", "rejectedIdentifier", "caa"})
# Refusals that waiting does not end: the next CA at once.
POLICY_PROBLEMS = frozenset({"rejectedIdentifier", "caa"})
# The renewal deadline: this share of its lifetime before the held certificate expires (15 days of 90).
DEADLINE_SHARE = 6


def falls_back(error: CertkeeperError) -> bool:
    if isinstance(error, Unreachable):
        return True
    return isinstance(error, CAError) and (error.acme_type in FALLBACK_PROBLEMS or error.retry_after is not None)


def waits_out(error: CertkeeperError, held: CertInfo | None, now: datetime.datetime) -> bool:
    """True when the refusal passes (a rate limit, a CA down) before the held certificate's renewal deadline.

    The first CA is then asked again when its Retry-After (or the backoff) ends, rather than moving
    the certificate to another CA over a passing refusal; a CA still down at the deadline, a Retry-After
    beyond it, no certificate held, or a policy refusal: the fallback CA now.
    """
    if held is None or (isinstance(error, CAError) and error.acme_type in POLICY_PROBLEMS):
        return False
    retry_after = error.retry_after if isinstance(error, CAError) and error.retry_after else 0.0
    deadline = held.not_after - held.lifetime / DEADLINE_SHARE
    return now + datetime.timedelta(seconds=retry_after) < deadline


class Fallback:
    def __init__(self, issuers: Sequence[IssuerSpec], store: AccountStore, stores: Sequence[AccountStore] = ()) -> None:
        self.issuers = tuple(issuers)
        self.store = store
        # One account store per CA where each keeps its own (the controller's privateKeySecretRef each).
        self.stores = tuple(stores)
        # Several certificates fall back at once (the controller's workers) and a Secret has no lock of its
        # own: one registration per fallback CA, not one per certificate.
        self._account_lock = threading.Lock()

    def order(
        self, spec: CertSpec, key_pem: bytes, solvers: Solvers, first: CertkeeperError
    ) -> tuple[IssuedCert, IssuerSpec]:
        """Order from each fallback CA in turn; the certificate and the CA that issued it, or the last error."""
        failure = first
        for index, issuer in enumerate(self.issuers):
            log.warning(
                "%s: %s; ordering from the fallback CA %s", spec.names[0], failure.problem, issuer.directory_url
            )
            try:
                with self._account_lock:
                    account = ensure_account(issuer, self.stores[index] if self.stores else self.store)
                return AcmeClient(issuer, account).order(spec, key_pem, solvers), issuer
            except CertkeeperError as error:
                failure = error
                if not falls_back(error):
                    break
        raise CertkeeperError(
            f"the fallback CA{'s' if len(self.issuers) > 1 else ''} failed too ({failure.problem})",
            f"first CA: {first}",
        )
