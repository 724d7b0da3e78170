"""Rate-limit headroom in `--metrics-file`: read from the host's ledger (ratelimits.json), one series per
limit and subject, only for registered domains with certificates in the window."""

from __future__ import annotations

import json
import time
from pathlib import Path

from promtext import Samples, parse, promtool_check, value

from testbench.command import Env, Run

LIMITS = "per-domain=3/7d,new-orders=10/3h"
REMAINING = "certkeeper_ratelimit_remaining"
LIMIT = "certkeeper_ratelimit_limit"
RESET = "certkeeper_ratelimit_reset_seconds"
WEEK = 7 * 86400
DOMAIN = "certificates_per_registered_domain"


def issue(certkeeper: Run, env: Env, prom: Path, name: str) -> tuple[int, str, Samples]:
    done = certkeeper(env, "issue", name, "--rate-limits", LIMITS, "--metrics-file", str(prom))
    text = prom.read_text()
    check = promtool_check(text)
    assert check.returncode == 0, check.stdout + check.stderr
    return done.returncode, done.stderr, parse(text)


def test_metrics_file_shows_headroom_per_registered_domain_and_account(
    env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    prom = tmp_path / "certkeeper.prom"
    started = time.time()
    for name in ("a.shop.test", "b.shop.test", "a.other.test"):
        code, stderr, samples = issue(certkeeper, env, prom, name)
        assert code == 0, stderr
    shop = {"limit": DOMAIN, "registered_domain": "shop.test"}
    assert value(samples, LIMIT, **shop) == 3.0
    assert value(samples, REMAINING, **shop) == 1.0
    assert value(samples, REMAINING, limit=DOMAIN, registered_domain="other.test") == 2.0
    # Only domains with certificates in the window: none for a domain never ordered.
    assert not [k for k in samples if k[0] == REMAINING and ("registered_domain", "example.com") in k[1]]
    reset = value(samples, RESET, **shop)
    assert reset is not None and WEEK - (time.time() - started) - 1 <= reset <= WEEK
    account = json.loads(next((store / "accounts").rglob("account.json")).read_text())["url"]
    orders = {"limit": "new_orders_per_account", "account": account}
    assert value(samples, LIMIT, **orders) == 10.0 and value(samples, REMAINING, **orders) == 7.0

    code, stderr, samples = issue(certkeeper, env, prom, "c.shop.test")
    assert code == 0, stderr
    assert value(samples, REMAINING, **shop) == 0.0
    first = value(samples, RESET, **shop)  # the oldest of the three leaves the window first
    assert first is not None and first <= reset

    # The ledger refuses the fourth; the file still says 0 left and when one more fits.
    code, stderr, samples = issue(certkeeper, env, prom, "d.shop.test")
    assert code != 0 and "certificates per registered domain" in stderr, stderr
    assert value(samples, REMAINING, **shop) == 0.0
    assert value(samples, REMAINING, **orders) == 6.0  # the refused order was never sent
    assert value(samples, RESET, **shop) <= first  # type: ignore[operator]


def test_no_headroom_series_for_a_ca_without_limits(env: Env, certkeeper: Run, tmp_path: Path) -> None:
    prom = tmp_path / "certkeeper.prom"
    done = certkeeper(env, "issue", "free.test", "--metrics-file", str(prom))  # auto: Pebble has no limits
    assert done.returncode == 0, done.stderr
    samples = parse(prom.read_text())
    assert not [k for k in samples if k[0].startswith("certkeeper_ratelimit_")]
    assert "certkeeper_ratelimit_" not in prom.read_text()  # no empty families either
    assert value(samples, "certkeeper_certificate_expiration_timestamp_seconds", name="free.test") is not None
