"""When is a certificate due? ARI window first, then the 1/3-lifetime backstop, with jitter and backoff.

Pure functions of their inputs (``now`` included), so every rule is testable without a CA.
"""

from __future__ import annotations

import datetime
import hashlib
from dataclasses import dataclass

from certkeeper.crypto import key_type_of
from certkeeper.model import RenewalState, RenewalWindow
from certkeeper.spec import CertSpec
from certkeeper.stores.base import StoredCert

# Let's Encrypt's guidance for retries after a failure: ~1 min, 10 min, 100 min, then daily.
BACKOFF_S = (60, 600, 6000, 86400)
SHORT_LIFETIME = datetime.timedelta(days=10)
MAX_CHECK_INTERVAL = datetime.timedelta(hours=12)  # ask ARI at least twice a day


@dataclass(frozen=True)
class Plan:
    due: bool
    reason: str
    renew_at: datetime.datetime | None  # when it becomes due (None: due now / unknown)
    next_check: datetime.datetime  # when to look again
    held_back: bool = False  # due, but backing off after failures


def _fraction(seed: str) -> float:
    """A stable number in [0, 1) per certificate, so jitter does not move between runs."""
    return int.from_bytes(hashlib.sha256(seed.encode()).digest()[:8], "big") / 2**64


def backstop_renewal(not_before: datetime.datetime, not_after: datetime.datetime, seed: str) -> datetime.datetime:
    """Renew when 1/3 of the lifetime remains (1/2 under 10 days), minus up to 2 % jitter."""
    lifetime = not_after - not_before
    remaining = lifetime / 2 if lifetime < SHORT_LIFETIME else lifetime / 3
    return not_after - remaining - lifetime * 0.02 * _fraction(seed)


def retry_at(state: RenewalState) -> datetime.datetime | None:
    """When the last failure allows another attempt (the CA's Retry-After wins if later)."""
    if not state.failures or state.last_failure is None:
        return None
    at = state.last_failure + datetime.timedelta(seconds=BACKOFF_S[min(state.failures, len(BACKOFF_S)) - 1])
    if state.retry_after is not None:
        at = max(at, state.retry_after)
    return at


def plan(
    spec: CertSpec,
    stored: StoredCert | None,
    now: datetime.datetime,
    window: RenewalWindow | None = None,
    state: RenewalState | None = None,
) -> Plan:
    state = state or RenewalState()
    blocked_until = retry_at(state)

    def due(reason: str) -> Plan:
        if blocked_until is not None and now < blocked_until:
            why = f"{reason}; backing off after {state.failures} failure(s)"
            return Plan(False, why, None, blocked_until, held_back=True)
        return Plan(True, reason, None, now)

    if stored is None:
        return due("no certificate yet")
    if stored.problem or stored.info is None:
        return due(f"stored certificate is unusable ({stored.problem})")
    info = stored.info
    missing = set(spec.names) - set(info.names)
    if missing:
        return due(f"does not cover {', '.join(sorted(missing))}")
    if key_type_of(stored.key_pem) != spec.key_type:
        return due(f"key type is not {spec.key_type.value}")
    if now >= info.not_after:
        return due("expired")
    # A renewBefore as long as the lifetime would make every new certificate due at once: an order
    # loop that burns the CA's limits. Ignored then (as cert-manager does); ARI or the backstop decide.
    if spec.renew_before is not None and spec.renew_before < info.lifetime:
        renew_at = info.not_after - spec.renew_before
        if now >= renew_at:
            return due("renewBefore reached")
        return Plan(False, "before renewBefore", renew_at, min(renew_at, now + MAX_CHECK_INTERVAL))
    if window is not None:
        # A fixed point in the window per certificate (RFC 9773 §4.2 suggests a random one).
        renew_at = window.start + (window.end - window.start) * _fraction(info.fingerprint)
        if now >= renew_at:
            return due("inside the CA's renewal window (ARI)")
        next_check = min(renew_at, window.retry_after, now + MAX_CHECK_INTERVAL)
        return Plan(False, "before the CA's renewal window (ARI)", renew_at, next_check)
    renew_at = backstop_renewal(info.not_before, info.not_after, info.fingerprint)
    if now >= renew_at:
        return due(
            "less than 1/3 of its lifetime left" if info.lifetime >= SHORT_LIFETIME else "half its lifetime used"
        )
    return Plan(False, "still good", renew_at, min(renew_at, now + MAX_CHECK_INTERVAL))
