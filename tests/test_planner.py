"""The renewal planner: pure functions of the stored certificate, the CA's window, the state and ``now``."""

from __future__ import annotations

import datetime
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from certkeeper.model import RenewalState, RenewalWindow
from certkeeper.planner import Plan, backstop_renewal, plan, retry_at
from certkeeper.spec import CertSpec, KeyType
from certkeeper.stores.base import StoredCert
from testbench.pki import TestCA, key_pem

T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)
DAY = datetime.timedelta(days=1)
HOUR = datetime.timedelta(hours=1)
MINUTE = datetime.timedelta(minutes=1)

_CA = TestCA("planner test CA")
_KEYS: dict[str, Any] = {}


def _key(kind: str) -> Any:
    if kind not in _KEYS:
        _KEYS[kind] = ec.generate_private_key(ec.SECP256R1()) if kind == "ec" else rsa.generate_private_key(65537, 2048)
    return _KEYS[kind]


def stored(
    names: tuple[str, ...] = ("plan.test", "www.plan.test"),
    lifetime: datetime.timedelta = 90 * DAY,
    kind: str = "ec",
    key_kind: str | None = None,
) -> StoredCert:
    """A certificate issued at T0 by a throw-away CA, as a store would hand it to the planner."""
    leaf = _CA.issue(names, key=_key(kind), not_before=T0, not_after=T0 + lifetime)
    return StoredCert.parse(key_pem(_key(key_kind or kind)), leaf.cert_pem, b"", {})


SPEC = CertSpec(("plan.test", "www.plan.test"))


def window(start: datetime.datetime, end: datetime.datetime) -> RenewalWindow:
    return RenewalWindow(start=start, end=end, retry_after=start - 10 * DAY)


# -- what makes a certificate due ------------------------------------------------------------------


def test_no_certificate_is_due() -> None:
    decision = plan(SPEC, None, T0)
    assert decision.due and decision.reason == "no certificate yet"


def test_fresh_certificate_is_not_due_and_says_when() -> None:
    decision = plan(SPEC, stored(), T0 + DAY)
    assert not decision.due
    assert decision.renew_at is not None
    # 1/3 of 90 days left = day 60, minus at most 2 % of the lifetime of jitter.
    assert T0 + 60 * DAY - 1.8 * DAY <= decision.renew_at <= T0 + 60 * DAY
    assert decision.next_check <= T0 + DAY + datetime.timedelta(hours=12)


def test_backstop_one_third_of_the_lifetime() -> None:
    cert = stored()
    assert not plan(SPEC, cert, T0 + 58 * DAY).due  # before day 60 minus the largest jitter
    late = plan(SPEC, cert, T0 + 60 * DAY)
    assert late.due and "1/3" in late.reason


def test_backstop_one_half_for_short_lifetimes() -> None:
    cert = stored(lifetime=6 * DAY)
    # Half of 6 days left = day 3 (minus <= 0.12 days of jitter); the 1/3 rule would say day 4.
    assert not plan(SPEC, cert, T0 + 2.85 * DAY).due
    due = plan(SPEC, cert, T0 + 3 * DAY)
    assert due.due and "half" in due.reason


def test_jitter_is_stable_for_one_certificate() -> None:
    cert = stored()
    first = plan(SPEC, cert, T0 + DAY).renew_at
    assert all(plan(SPEC, cert, T0 + n * DAY).renew_at == first for n in range(2, 10))


def _same_lifetime_certificates(count: int, lifetime: datetime.timedelta) -> list[StoredCert]:
    """``count`` certificates issued at the same instant for the same names: only the serial differs."""
    return [
        StoredCert.parse(
            key_pem(_key("ec")),
            _CA.issue(SPEC.names, key=_key("ec"), not_before=T0, not_after=T0 + lifetime, serial=5000 + n).cert_pem,
            b"",
            {},
        )
        for n in range(count)
    ]


@pytest.mark.parametrize(
    ("lifetime", "renew_by"),
    [(90 * DAY, 60 * DAY), (6 * DAY, 3 * DAY)],  # 1/3 of the lifetime left; 1/2 under 10 days
    ids=["90-days", "6-days"],
)
def test_jitter_spreads_certificates_of_the_same_lifetime(
    lifetime: datetime.timedelta, renew_by: datetime.timedelta
) -> None:
    # Without jitter every certificate issued at one instant would renew at one instant: a herd at the CA.
    certs = _same_lifetime_certificates(40, lifetime)
    times = [plan(SPEC, cert, T0 + datetime.timedelta(hours=1)).renew_at for cert in certs]
    assert all(t is not None for t in times)
    band_end = T0 + renew_by
    band_start = band_end - lifetime * 0.02  # at most 2 % of the lifetime earlier
    assert all(band_start <= t <= band_end for t in times if t is not None), "a renewal time left the band"
    assert len(set(times)) == len(certs), "two certificates got the same renewal time"
    spread = max(t for t in times if t) - min(t for t in times if t)
    assert spread > (band_end - band_start) / 2, (
        f"40 certificates use only {spread} of the {band_end - band_start} band"
    )


def test_ari_points_spread_across_the_window() -> None:
    certs = _same_lifetime_certificates(40, 90 * DAY)
    w = window(T0 + 50 * DAY, T0 + 52 * DAY)
    points = [plan(SPEC, cert, T0 + DAY, w).renew_at for cert in certs]
    assert all(p is not None and w.start <= p < w.end for p in points), "a renewal point left the CA's window"
    assert len(set(points)) == len(certs), "two certificates got the same point in the window"
    spread = max(p for p in points if p) - min(p for p in points if p)
    assert spread > (w.end - w.start) / 2, f"40 certificates use only {spread} of the 2-day window"


def test_expired_certificate_is_due() -> None:
    decision = plan(SPEC, stored(), T0 + 91 * DAY)
    assert decision.due and decision.reason == "expired"


def test_names_change_makes_it_due() -> None:
    more = CertSpec(("plan.test", "www.plan.test", "api.plan.test"))
    decision = plan(more, stored(), T0 + DAY)
    assert decision.due and "api.plan.test" in decision.reason
    fewer = CertSpec(("plan.test",))
    assert not plan(fewer, stored(), T0 + DAY).due, "a certificate covering more names still covers these"


@pytest.mark.parametrize(("kind", "wanted"), [("ec", KeyType.RSA_2048), ("rsa", KeyType.EC_P256)])
def test_key_type_change_makes_it_due(kind: str, wanted: KeyType) -> None:
    spec = CertSpec(SPEC.names, key_type=wanted)
    decision = plan(spec, stored(kind=kind), T0 + DAY)
    assert decision.due and wanted.value in decision.reason
    same = CertSpec(SPEC.names, key_type=KeyType.EC_P256 if kind == "ec" else KeyType.RSA_2048)
    assert not plan(same, stored(kind=kind), T0 + DAY).due


def test_key_not_matching_certificate_is_due() -> None:
    broken = stored(kind="ec", key_kind="rsa")
    assert broken.problem is not None
    decision = plan(CertSpec(SPEC.names, key_type=KeyType.RSA_2048), broken, T0 + DAY)
    assert decision.due and "does not match" in decision.reason


# -- the CA's window (ARI) comes first -------------------------------------------------------------


def test_ari_window_in_the_past_is_due_even_for_a_young_certificate() -> None:
    decision = plan(SPEC, stored(), T0 + 2 * DAY, window(T0, T0 + DAY))
    assert decision.due and "ARI" in decision.reason


def test_ari_window_in_the_future_is_not_due_even_past_the_backstop() -> None:
    at = T0 + 70 * DAY  # past the 1/3 backstop
    decision = plan(SPEC, stored(), at, window(T0 + 80 * DAY, T0 + 82 * DAY))
    assert not decision.due and "ARI" in decision.reason
    assert decision.renew_at is not None
    assert T0 + 80 * DAY <= decision.renew_at <= T0 + 82 * DAY
    assert decision.next_check <= at + datetime.timedelta(hours=12), "ARI is asked again at least twice a day"


def test_ari_point_inside_the_window() -> None:
    cert = stored()
    w = window(T0 + 10 * DAY, T0 + 20 * DAY)
    renew_at = plan(SPEC, cert, T0, w).renew_at
    assert renew_at is not None
    assert not plan(SPEC, cert, renew_at - datetime.timedelta(seconds=1), w).due
    assert plan(SPEC, cert, renew_at, w).due


def test_ari_retry_after_bounds_the_next_check() -> None:
    w = RenewalWindow(T0 + 50 * DAY, T0 + 51 * DAY, retry_after=T0 + DAY + datetime.timedelta(hours=1))
    assert plan(SPEC, stored(), T0 + DAY, w).next_check == T0 + DAY + datetime.timedelta(hours=1)


# -- backoff after failures ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("failures", "wait"),
    [
        (1, datetime.timedelta(minutes=1)),
        (2, datetime.timedelta(minutes=10)),
        (3, datetime.timedelta(minutes=100)),
        (4, datetime.timedelta(days=1)),
        (9, datetime.timedelta(days=1)),
    ],
)
def test_backoff_after_failures(failures: int, wait: datetime.timedelta) -> None:
    failed_at = T0 + 70 * DAY  # the certificate is due (past the backstop)
    state = RenewalState(failures=failures, last_failure=failed_at)
    blocked = plan(SPEC, stored(), failed_at + wait - datetime.timedelta(seconds=1), state=state)
    assert not blocked.due and "backing off" in blocked.reason
    assert blocked.next_check == failed_at + wait
    assert plan(SPEC, stored(), failed_at + wait, state=state).due


def test_backoff_honours_a_later_retry_after() -> None:
    failed_at = T0 + 70 * DAY
    later = failed_at + datetime.timedelta(hours=3)
    state = RenewalState(failures=1, last_failure=failed_at, retry_after=later)
    assert not plan(SPEC, stored(), failed_at + datetime.timedelta(hours=2), state=state).due
    assert plan(SPEC, stored(), later, state=state).due


def test_backoff_applies_to_a_missing_certificate_too() -> None:
    state = RenewalState(failures=2, last_failure=T0)
    assert not plan(SPEC, None, T0 + datetime.timedelta(minutes=5), state=state).due
    assert plan(SPEC, None, T0 + datetime.timedelta(minutes=10), state=state).due


def test_success_clears_backoff() -> None:
    state = RenewalState(failures=0, last_failure=T0)
    assert plan(SPEC, None, T0, state=state).due


# -- the whole decision, field by field -------------------------------------------------------------


def test_due_means_now() -> None:
    assert plan(SPEC, None, T0) == Plan(True, "no certificate yet", None, T0, held_back=False)


def test_still_good_says_when_and_looks_again_within_twelve_hours() -> None:
    cert = stored()
    assert cert.info is not None
    renew_at = backstop_renewal(cert.info.not_before, cert.info.not_after, cert.info.fingerprint)
    assert plan(SPEC, cert, T0 + DAY) == Plan(False, "still good", renew_at, T0 + DAY + 12 * HOUR)
    close = renew_at - HOUR
    assert plan(SPEC, cert, close) == Plan(False, "still good", renew_at, renew_at)


def test_backing_off_is_not_due_and_says_why() -> None:
    state = RenewalState(failures=2, last_failure=T0)
    expected = Plan(False, "no certificate yet; backing off after 2 failure(s)", None, T0 + 10 * MINUTE, True)
    assert plan(SPEC, None, T0 + MINUTE, state=state) == expected


def test_no_backoff_without_a_recorded_failure() -> None:
    assert retry_at(RenewalState(last_failure=T0)) is None
    assert retry_at(RenewalState(failures=3)) is None
    assert retry_at(RenewalState()) is None


def test_the_exact_moments() -> None:
    cert = stored()
    assert cert.info is not None
    renew_at = backstop_renewal(cert.info.not_before, cert.info.not_after, cert.info.fingerprint)
    at = plan(SPEC, cert, renew_at)
    assert at == Plan(True, "less than 1/3 of its lifetime left", None, renew_at)
    assert plan(SPEC, cert, cert.info.not_after).reason == "expired"
    assert plan(SPEC, cert, cert.info.not_after - datetime.timedelta(seconds=1)).reason != "expired"
    short = stored(lifetime=6 * DAY)
    assert short.info is not None
    short_at = backstop_renewal(short.info.not_before, short.info.not_after, short.info.fingerprint)
    assert plan(SPEC, short, short_at).reason == "half its lifetime used"


def test_ten_days_is_not_a_short_lifetime() -> None:
    # 1/3 left of 10 days is day 6.67 (minus up to 0.2 days); the 1/2 rule would say day 5.
    renew_at = backstop_renewal(T0, T0 + 10 * DAY, "ten days")
    assert T0 + 10 * DAY * 2 / 3 - 0.2 * DAY <= renew_at <= T0 + 10 * DAY * 2 / 3
    assert plan(SPEC, stored(lifetime=10 * DAY), T0 + 7 * DAY).reason == "less than 1/3 of its lifetime left"


def test_reasons_name_what_is_wrong() -> None:
    more = CertSpec(("plan.test", "www.plan.test", "b.plan.test", "a.plan.test"))
    assert plan(more, stored(), T0 + DAY).reason == "does not cover a.plan.test, b.plan.test"
    rsa_spec = CertSpec(SPEC.names, key_type=KeyType.RSA_2048)
    assert plan(rsa_spec, stored(), T0 + DAY).reason == "key type is not rsa-2048"
    broken = stored(kind="ec", key_kind="rsa")
    assert plan(SPEC, broken, T0 + DAY).reason == f"stored certificate is unusable ({broken.problem})"


def test_ari_decisions_field_by_field() -> None:
    cert = stored()
    w = window(T0 + 10 * DAY, T0 + 20 * DAY)
    before = plan(SPEC, cert, T0 + DAY, w)
    assert before.renew_at is not None
    assert before == Plan(False, "before the CA's renewal window (ARI)", before.renew_at, w.retry_after)
    inside = plan(SPEC, cert, before.renew_at, w)
    assert inside == Plan(True, "inside the CA's renewal window (ARI)", None, before.renew_at)
    # The point in the window comes before the CA's retry time and the twelve-hour look: it is the next check.
    soon = RenewalWindow(T0 + HOUR, T0 + 2 * HOUR, retry_after=T0 + 5 * DAY)
    near = plan(SPEC, cert, T0, soon)
    assert near.renew_at is not None and near.next_check == near.renew_at


def test_ari_is_asked_again_within_twelve_hours_even_when_the_ca_says_later() -> None:
    far = RenewalWindow(T0 + 50 * DAY, T0 + 51 * DAY, retry_after=T0 + 3 * DAY)
    assert plan(SPEC, stored(), T0, far).next_check == T0 + 12 * HOUR


# -- renewBefore (a Certificate's spec.renewBefore) overrides ARI and the backstop -----------------


def test_renew_before_sets_the_moment_whatever_the_backstop_says() -> None:
    cert = stored()  # 90 days from T0; the backstop would renew near day 60
    spec = CertSpec(SPEC.names, renew_before=10 * DAY)
    renew_at = T0 + 80 * DAY
    # Long before: the moment is given, and the planner still looks again within twelve hours.
    assert plan(spec, cert, T0 + 70 * DAY) == Plan(False, "before renewBefore", renew_at, T0 + 70 * DAY + 12 * HOUR)
    # Close to it: the next look is the moment itself, not later.
    close = renew_at - HOUR
    assert plan(spec, cert, close) == Plan(False, "before renewBefore", renew_at, renew_at)
    # Due from the exact moment on (not one tick later).
    assert plan(spec, cert, renew_at) == Plan(True, "renewBefore reached", None, renew_at)


def test_a_renew_before_as_long_as_the_lifetime_is_ignored_instead_of_renewing_in_a_loop() -> None:
    cert = stored()  # 90 days: a fresh one would be due at once, and its renewal too, and so on
    for renew_before in (90 * DAY, 4000 * DAY):
        decision = plan(CertSpec(SPEC.names, renew_before=renew_before), cert, T0 + HOUR)
        assert not decision.due and decision == plan(SPEC, cert, T0 + HOUR)


def test_renew_before_wins_over_an_ari_window_either_way() -> None:
    cert = stored()
    early = CertSpec(SPEC.names, renew_before=60 * DAY)  # due from day 30
    late_window = window(T0 + 80 * DAY, T0 + 82 * DAY)
    assert plan(early, cert, T0 + 31 * DAY, late_window).reason == "renewBefore reached"
    late = CertSpec(SPEC.names, renew_before=2 * DAY)  # due from day 88
    past_window = window(T0, T0 + DAY)
    decision = plan(late, cert, T0 + 5 * DAY, past_window)
    assert not decision.due and decision.renew_at == T0 + 88 * DAY
