"""The rate-limit ledger without a CA: limits as data, registered domains, refusals, atomic reservations."""

from __future__ import annotations

import contextlib
import datetime
import multiprocessing
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import pytest
from acme import messages

from certkeeper.errors import ConfigError
from certkeeper.ledger import FileBackend, Ledger, RateLimited
from certkeeper.psl import registered_domain
from certkeeper.ratelimits import DAY, LETSENCRYPT_LIMITS, Event, Usage, parse_limits, usage
from certkeeper.spec import LETSENCRYPT, LETSENCRYPT_STAGING

ACCOUNT = "https://ca.test/acct/1"
START = 1_800_000_000.0
T = TypeVar("T")


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> float:
        return self.now


def ledger_at(root: Path, limits: str = "letsencrypt") -> tuple[Ledger, Clock]:
    clock = Clock()
    return Ledger(FileBackend(root), parse_limits(limits, LETSENCRYPT), clock), clock


def issue(ledger: Ledger, *names: str, ari: bool = False, renewal: bool = False) -> None:
    gate = ledger.gate(ACCOUNT, names, ari_renewal=ari, same_names_renewal=renewal)
    with gate.placing(lambda: None):
        pass
    ledger.issued(ACCOUNT, names, gate.token)


@pytest.mark.parametrize(
    ("name", "domain"),
    [
        ("a.b.example.co.uk", "example.co.uk"),  # a two-label public suffix
        ("blog.alice.github.io", "alice.github.io"),  # a private suffix counts too, as Let's Encrypt counts
        ("*.shop.example.com", "example.com"),
        ("www.example.test", "example.test"),  # a suffix the list does not know: its last two labels
        ("192.0.2.7", "192.0.2.7"),
    ],
)
def test_registered_domains_come_from_the_public_suffix_list(name: str, domain: str) -> None:
    assert registered_domain(name) == domain


def test_only_lets_encrypt_production_gets_its_limits_unless_configured() -> None:
    assert parse_limits("auto", LETSENCRYPT) == LETSENCRYPT_LIMITS
    assert parse_limits("auto", LETSENCRYPT_STAGING) == ()
    assert parse_limits("auto", "https://ca.internal/directory") == ()
    (orders,) = parse_limits("new-orders=20/1h", "https://ca.internal/directory")
    assert (orders.count, orders.window_s, orders.title) == (20, 3600, "new orders per account")


def test_a_limit_that_cannot_be_read_is_one_line_naming_the_forms() -> None:
    with pytest.raises(ConfigError) as refused:
        parse_limits("per-domain=fifty", LETSENCRYPT)
    message = str(refused.value)
    assert "\n" not in message and "'per-domain=fifty'" in message and "NAME=COUNT/WINDOW" in message


def test_the_51st_certificate_for_a_registered_domain_is_refused_until_the_first_ages_out(tmp_path: Path) -> None:
    ledger, clock = ledger_at(tmp_path)
    for i in range(50):
        issue(ledger, f"host{i}.example.com")
        clock.now += 60
    assert ledger.headroom(["new.example.com"])["certificates per registered domain"] == 0
    with pytest.raises(RateLimited) as refused:
        issue(ledger, "new.example.com")
    message = str(refused.value)
    assert "certificates per registered domain" in message and "example.com (50 of 50 in 7 days)" in message
    free_at = datetime.datetime.fromtimestamp(START + 7 * DAY, datetime.UTC)
    assert free_at.strftime("%Y-%m-%d %H:%M UTC") in message
    assert refused.value.retry_after == pytest.approx(START + 7 * DAY - clock.now)
    # Other registered domains, ARI renewals and renewals of the same names still go through.
    issue(ledger, "www.example.org")
    issue(ledger, "host3.example.com", ari=True)
    issue(ledger, "host4.example.com", renewal=True)
    # Renewals count (conservatively, as Let's Encrypt long counted them) though they are never held back:
    # now 52 for example.com. Three of the first certificates age out: room for exactly one.
    clock.now = START + 7 * DAY + 2 * 60 + 1
    issue(ledger, "new.example.com")
    with pytest.raises(RateLimited):
        issue(ledger, "newer.example.com")


def test_a_sixth_duplicate_is_refused_even_as_a_renewal_of_the_same_names(tmp_path: Path) -> None:
    ledger, _ = ledger_at(tmp_path)
    for _ in range(5):
        issue(ledger, "a.example.net", "b.example.net", renewal=True)
    with pytest.raises(RateLimited) as refused:
        issue(ledger, "b.example.net", "a.example.net", renewal=True)
    assert "duplicate certificates for the same names" in str(refused.value)
    issue(ledger, "a.example.net", "b.example.net", ari=True)  # an ARI renewal is exempt from all


def test_five_failed_validations_hold_the_name_for_an_hour(tmp_path: Path) -> None:
    ledger, clock = ledger_at(tmp_path)
    for _ in range(5):
        ledger.failed_validation(ACCOUNT, ["broken.example.org"])
    with pytest.raises(RateLimited) as refused:
        issue(ledger, "broken.example.org", "fine.example.org")
    assert "failed authorizations per hostname would be exceeded for broken.example.org" in str(refused.value)
    clock.now += 3601
    issue(ledger, "broken.example.org", "fine.example.org")


def test_the_cas_retry_after_holds_every_order_of_the_account(tmp_path: Path) -> None:
    ledger, clock = ledger_at(tmp_path, "none")
    ledger.limited(ACCOUNT, 120)
    with pytest.raises(RateLimited) as refused:
        issue(ledger, "other.example.com")
    assert "it answered rateLimited" in str(refused.value)
    clock.now += 121
    issue(ledger, "other.example.com")


def test_an_eleventh_account_from_this_host_is_refused(tmp_path: Path) -> None:
    ledger, _ = ledger_at(tmp_path)
    for i in range(10):
        ledger.check_new_account()
        ledger.account_registered(f"{ACCOUNT}{i}")
    with pytest.raises(RateLimited) as refused:
        ledger.check_new_account()
    assert "accounts per IP address" in str(refused.value)


def test_the_ledger_file_is_private(tmp_path: Path) -> None:
    ledger, _ = ledger_at(tmp_path)
    issue(ledger, "a.example.com")
    assert stat.S_IMODE((tmp_path / "ratelimits.json").stat().st_mode) == 0o600


def _reserve_many(root: str, attempts: int, placed: multiprocessing.Queue[int]) -> None:  # type: ignore[type-arg]
    ledger = Ledger(FileBackend(root), parse_limits("new-orders=50/3h", LETSENCRYPT))
    count = 0
    for i in range(attempts):
        try:
            with ledger.gate(ACCOUNT, [f"n{i}.example.com"], ari_renewal=False, same_names_renewal=False).placing(
                lambda: None
            ):
                count += 1
        except RateLimited:
            pass
    placed.put(count)


def test_four_processes_racing_for_fifty_slots_place_exactly_fifty_orders(tmp_path: Path) -> None:
    context = multiprocessing.get_context("fork")
    placed: multiprocessing.Queue[int] = context.Queue()  # type: ignore[type-arg]
    workers = [context.Process(target=_reserve_many, args=(str(tmp_path), 20, placed)) for _ in range(4)]
    for worker in workers:
        worker.start()
    counts = [placed.get(timeout=60) for _ in workers]
    for worker in workers:
        worker.join(timeout=10)
    assert sum(counts) == 50, counts


class CountingBackend(FileBackend):
    """The file ledger, counting its writes (each one a read-modify-write of the whole record)."""

    def __init__(self, root: Path) -> None:
        super().__init__(root)
        self.writes = 0

    def update(self, change: Callable[[list[dict[str, Any]]], T]) -> T:
        self.writes += 1
        time.sleep(0.005)  # a Secret's replace takes milliseconds: threads arriving meanwhile join the next write
        return super().update(change)


def test_sixteen_threads_racing_for_fifty_slots_place_exactly_fifty_in_fewer_writes(tmp_path: Path) -> None:
    backend = CountingBackend(tmp_path)
    ledger = Ledger(backend, parse_limits("new-orders=50/3h", LETSENCRYPT))
    placed: list[str] = []
    refused: list[str] = []

    def worker(i: int) -> None:
        for j in range(5):
            names = [f"n{i}-{j}.example.com"]
            try:
                gate = ledger.gate(ACCOUNT, names, ari_renewal=False, same_names_renewal=False)
                with gate.placing(lambda: None):
                    placed.append(names[0])
                ledger.issued(ACCOUNT, names, gate.token)
            except RateLimited as error:
                refused.append(str(error))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(placed) == 50 and len(refused) == 30, (len(placed), len(refused))
    assert all("new orders per account would be exceeded" in r for r in refused), refused[:1]
    recorded = [e for e in ledger.events() if e.kind in ("order", "cert")]
    assert sorted(e.names[0] for e in recorded if e.kind == "order") == sorted(placed)  # each counted once
    assert sorted(e.names[0] for e in recorded if e.kind == "cert") == sorted(placed)
    # 80 reservations and 50 certificates: written in batches, not one write each.
    assert backend.writes < 130 / 2, backend.writes


def test_an_order_reserved_while_another_is_refused_with_429_is_not_sent(tmp_path: Path) -> None:
    ledger, _ = ledger_at(tmp_path, "none")
    sent: list[str] = []
    first_sent, second_reserved = threading.Event(), threading.Event()
    problem = messages.Error(
        typ="urn:ietf:params:acme:error:rateLimited", detail="too many new orders from this account"
    )

    def first() -> None:
        gate = ledger.gate(ACCOUNT, ["a.example.com"], ari_renewal=False, same_names_renewal=False)
        with contextlib.suppress(messages.Error), gate.placing(lambda: 3600.0):
            sent.append("a")
            first_sent.set()
            second_reserved.wait(10)
            time.sleep(0.2)  # the second order is waiting its turn to be sent
            raise problem

    thread = threading.Thread(target=first)
    thread.start()
    first_sent.wait(10)
    gate = ledger.gate(ACCOUNT, ["b.example.com"], ari_renewal=False, same_names_renewal=False)
    second_reserved.set()
    with pytest.raises(RateLimited) as refused, gate.placing(lambda: None):
        sent.append("b")
    thread.join(10)
    assert sent == ["a"]
    assert "not ordering: the CA's Retry-After (it answered rateLimited)" in str(refused.value)
    # The unsent order's reservation is gone; the CA's refusal is in the ledger for other processes.
    events = ledger.events()
    assert [e.names for e in events if e.kind == "order"] == []  # the CA answered: neither order exists
    assert any(e.kind == "limited" and e.until > START for e in events)


def test_a_refusal_for_one_registered_domain_holds_only_that_domain(tmp_path: Path) -> None:
    ledger, _ = ledger_at(tmp_path, "none")
    gate = ledger.gate(ACCOUNT, ["www.busy.example"], ari_renewal=False, same_names_renewal=False)
    problem = messages.Error(
        typ="urn:ietf:params:acme:error:rateLimited",
        detail='too many certificates (50) already issued for "busy.example" in the last 168h0m0s',
    )
    with pytest.raises(messages.Error), gate.placing(lambda: 86400.0):
        raise problem
    with pytest.raises(RateLimited) as refused:
        issue(ledger, "api.busy.example")
    assert "for busy.example" in str(refused.value)
    issue(ledger, "www.quiet.example")  # another registered domain of the same account goes on
    account_wide = messages.Error(
        typ="urn:ietf:params:acme:error:rateLimited",
        detail="too many new orders (300) from this account in the last 3h0m0s",
    )
    gate = ledger.gate(ACCOUNT, ["a.quiet.example"], ari_renewal=False, same_names_renewal=False)
    with pytest.raises(messages.Error), gate.placing(lambda: 600.0):
        raise account_wide
    with pytest.raises(RateLimited):
        issue(ledger, "www.elsewhere.example")


def test_usage_for_metrics_counts_each_registered_domain_in_its_window_only() -> None:
    """What certkeeper_ratelimit_* shows: certificates and orders in flight per registered domain (a closed
    order is not a second count), orders per account, accounts per host; a domain a week idle drops out."""
    now = START
    events = [
        Event("cert", now - 8 * DAY, ACCOUNT, ("old.gone.example",), ("gone.example",)),
        Event("cert", now - 2 * DAY, ACCOUNT, ("a.shop.example", "b.blog.example"), ("blog.example", "shop.example")),
        Event("order", now - 2 * DAY, ACCOUNT, ("a.shop.example",), ("shop.example",)),
        Event("order", now - 60, ACCOUNT, ("c.shop.example",), ("shop.example",), open=True),
        Event("account", now - 3 * 3600 - 1, ACCOUNT),
    ]
    rows = {(u.limit, u.subject): u for u in usage(LETSENCRYPT_LIMITS, events, now)}
    domain = "certificates_per_registered_domain"
    assert rows[(domain, "shop.example")] == Usage(
        domain, "registered_domain", "shop.example", 50, 2, now - 2 * DAY + 7 * DAY
    )
    assert rows[(domain, "blog.example")].used == 1
    assert (domain, "gone.example") not in rows
    # Of the two orders only the one a minute ago is inside the 3-hour window.
    assert rows[("new_orders_per_account", ACCOUNT)].used == 1
    assert rows[("new_orders_per_account", ACCOUNT)].reset_at == now - 60 + 3 * 3600
    # The account registered just over 3 hours ago no longer counts, but the host's series stays.
    assert rows[("accounts_per_ip_address", "")] == Usage("accounts_per_ip_address", "", "", 10, 0, now)
    assert len(rows) == 4


def test_usage_when_full_says_when_one_more_fits() -> None:
    limits = parse_limits("per-domain=2/7d", "")
    at = [START - 3 * DAY, START - 2 * DAY, START - DAY]
    events = [Event("cert", t, ACCOUNT, (f"n{i}.shop.example",), ("shop.example",)) for i, t in enumerate(at)]
    (row,) = usage(limits, events, START)
    # 3 of 2 (an exempt renewal went past): room for one more once two have left, 5 days from now.
    assert (row.used, row.allowed, row.reset_at) == (3, 2, START - 2 * DAY + 7 * DAY)


def test_an_order_closed_in_place_in_the_kept_record_stops_counting_as_open() -> None:
    """The cluster's record stays in memory between writes and its entries are converted once; an order
    closed in place (its certificate issued elsewhere, or failed) must be read closed at the next check."""
    from certkeeper.ledger import _events, _record

    raw = [_record("order", ACCOUNT, [f"n{i}.example.com"], START, open=True, id=str(i)) for i in range(3)]
    for _ in range(3):  # read afresh, then again, then from what was kept
        assert [e.open for e in _events(raw, START)] == [True, True, True]
    raw[1]["open"] = False
    raw.append(_record("cert", ACCOUNT, ["n1.example.com"], START))
    assert [(e.kind, e.open) for e in _events(raw, START)] == [
        ("order", True),
        ("order", False),
        ("order", True),
        ("cert", False),
    ]
