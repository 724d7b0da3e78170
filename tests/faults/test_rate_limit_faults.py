"""Rate limits under fire, against real Pebble behind the test ACME front: the ledger refuses before the CA
would, a rateLimited or 503 answer holds every newOrder until its Retry-After, badNonce storms and dropped
connections cost no extra orders. Each test prints its figures (docs/reliability.md records them)."""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from testbench.ari import AcmeFront
from testbench.command import Env, Run, one_error_line


def orders_for(front: AcmeFront, suffix: str) -> int:
    return sum(
        1 for o in front.recorded_orders() if any(i.get("value", "").endswith(suffix) for i in o.get("identifiers", []))
    )


def name_file(path: Path, names: list[str]) -> Path:
    path.write_text("".join(f"{n}\n" for n in names))
    return path


def test_an_order_over_a_limit_is_not_sent_and_says_which_limit_and_when(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, store: Path
) -> None:
    env = {**ari_env, "CERTKEEPER_RATE_LIMITS": "per-domain=3/7d"}
    for name in ("a.limit.test", "b.limit.test", "c.limit.test"):
        assert certkeeper(env, "issue", name).returncode == 0
    before = ari.recorded_requests()
    refused = certkeeper(env, "issue", "d.limit.test")
    assert refused.returncode == 1
    line = one_error_line(refused)
    assert (
        "not ordering: certificates per registered domain would be exceeded for limit.test (3 of 3 in 7 days)" in line
    )
    assert "headroom returns at " in line and "put more names in each certificate" in line
    assert orders_for(ari, "limit.test") == 3
    assert not [r for r in ari.recorded_requests()[len(before) :] if r[0] == "POST"]  # nothing reached the CA
    # Another registered domain is not held back; the ledger is private to the store's owner.
    assert certkeeper(env, "issue", "a.other-limit.test").returncode == 0
    assert stat.S_IMODE((store / "ratelimits.json").stat().st_mode) == 0o600
    rows = {r["lineage"]: r for r in json.loads(certkeeper(env, "status", "--json").stdout)}
    assert rows["a.limit.test"]["headroom"]["certificates per registered domain"] == 0
    assert rows["a.other-limit.test"]["headroom"]["certificates per registered domain"] == 2


def _retry_after_holds(ari: AcmeFront, env: Env, certkeeper: Run, tmp_path: Path, what: str) -> None:
    names = [f"n{i}.{what}.test" for i in range(10)]
    first = certkeeper(env, "issue", "--file", str(name_file(tmp_path / "names", names)))
    refused_at = ari.recorded_new_order_times()
    again = certkeeper(env, "issue", "--file", str(tmp_path / "names"), "--force")
    third = certkeeper(env, "issue", names[0])
    times = ari.recorded_new_order_times()
    print(f"{what}: 10 certificates, 3 runs, {len(times)} newOrder request(s) before Retry-After elapsed")
    assert first.returncode == again.returncode == third.returncode == 1
    # The first newOrder got the refusal; every other certificate of that run and every later run waited.
    assert len(refused_at) == 1 and times == refused_at, times
    held = [line for line in again.stderr.splitlines() if "not ordering: the CA's Retry-After" in line]
    assert len(held) == 10, again.stderr  # one line per certificate saying why it waits, and until when


def test_a_rate_limited_answer_holds_every_new_order_until_its_retry_after(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, tmp_path: Path
) -> None:
    ari.rate_limit_retry_after = 3600
    _retry_after_holds(ari, ari_env, certkeeper, tmp_path, "ratelimited")


def test_a_ca_down_for_maintenance_is_not_asked_again_before_its_retry_after(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, tmp_path: Path
) -> None:
    ari.unavailable_retry_after = 3600
    _retry_after_holds(ari, ari_env, certkeeper, tmp_path, "unavailable")


def test_once_the_retry_after_elapsed_orders_go_out_again(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, tmp_path: Path
) -> None:
    ari.rate_limit_retry_after = 2
    assert certkeeper(ari_env, "issue", "late.elapsed.test").returncode == 1
    ari.rate_limit_retry_after = None
    assert certkeeper(ari_env, "issue", "late.elapsed.test").returncode == 1  # deferred: still within it
    assert len(ari.recorded_new_order_times()) == 1
    time.sleep(2.5)
    issued = certkeeper(ari_env, "issue", "late.elapsed.test", "--force")  # past certkeeper's own back-off
    assert issued.returncode == 0, issued.stderr
    assert orders_for(ari, "elapsed.test") == 1


def test_fifty_certificates_under_half_the_nonces_rejected_take_fifty_orders(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, tmp_path: Path
) -> None:
    ari.bad_nonce_rate = 0.5
    names = [f"c{i}.nonce.test" for i in range(50)]
    started = time.monotonic()
    run = certkeeper(ari_env, "issue", "--file", str(name_file(tmp_path / "names", names)), timeout=300)
    print(f"badNonce 50 %: {ari.bad_nonces_sent} rejected, 50 certificates, {orders_for(ari, 'nonce.test')} orders, "
          f"{time.monotonic() - started:.1f} s")  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    assert ari.bad_nonces_sent > 100  # the fault did happen, often
    assert orders_for(ari, "nonce.test") <= 55  # ≤ 1.1 × certificates


def test_dropped_connections_cost_an_order_only_when_the_new_order_itself_was_lost(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, store: Path, tmp_path: Path
) -> None:
    ari.reset_rate = 0.1
    names = [f"c{i}.reset.test" for i in range(20)]
    runs = 0
    while (missing := [n for n in names if not (store / n / "current").exists()]) and runs < 8:
        runs += 1
        # --force past the back-off for the certificates still missing (never for one already issued).
        certkeeper(ari_env, "issue", "--file", str(name_file(tmp_path / "names", missing)), "--force")
        ari.reset_rate = 0.1 if runs < 3 else 0.0
    orders = orders_for(ari, "reset.test")
    resets = ari.reset_paths
    # Created by the CA, but the client never heard of them (a dropped newOrder the CA had refused, e.g. for
    # a stale nonce, created nothing).
    lost_orders = ari.orders_lost
    print(f"connection resets: {len(resets)} dropped ({lost_orders} at newOrder), 20 certificates, "
          f"{orders} orders, {runs} runs")  # fmt: skip
    assert not missing and len(resets) > resets.count(ari.new_order_path)  # resets hit the rest of the order too
    # Every other dropped request (challenge, finalize, poll, download) was sent again: no order lost to it.
    assert orders == 20 + lost_orders


def serials(store: Path, names: list[str]) -> dict[str, str]:
    return {n: json.loads((store / n / "meta.json").read_text())["serial"] for n in names}


def test_renew_under_half_the_nonces_rejected_takes_one_order_per_certificate(
    ari: AcmeFront, ari_env: Env, certkeeper: Run, store: Path, tmp_path: Path
) -> None:
    names = [f"r{i}.renonce.test" for i in range(20)]
    first = certkeeper(ari_env, "issue", "--file", str(name_file(tmp_path / "names", names)), timeout=300)
    assert first.returncode == 0, first.stderr
    issued = serials(store, names)
    ari.window_in_past()  # the CA asks for every one of them to be renewed now (ARI)
    ari.bad_nonce_rate = 0.5
    run = certkeeper(ari_env, "renew", timeout=300)
    renewals = [o for o in ari.recorded_orders() if o.get("replaces")]
    print(f"renew, badNonce 50 %: {ari.bad_nonces_sent} rejected, 20 certificates, {len(renewals)} orders")
    assert run.returncode == 0, run.stderr[-2000:]
    assert ari.bad_nonces_sent > 40
    renewed = serials(store, names)
    assert all(renewed[n] != issued[n] for n in names)
    assert len(renewals) <= 22  # ≤ 1.1 × certificates


@pytest.mark.parametrize("fault", ["rateLimited", "unavailable"])
def test_a_refused_renewal_is_not_asked_again_before_its_retry_after(
    fault: str, ari: AcmeFront, ari_env: Env, certkeeper: Run, store: Path, tmp_path: Path
) -> None:
    names = [f"r{i}.{fault.lower()}-renew.test" for i in range(5)]
    assert certkeeper(ari_env, "issue", "--file", str(name_file(tmp_path / "names", names))).returncode == 0
    issued = serials(store, names)
    ari.window_in_past()
    ari.new_order_times.clear()
    if fault == "rateLimited":
        ari.rate_limit_retry_after = 3600
    else:
        ari.unavailable_retry_after = 3600
    runs = [certkeeper(ari_env, "renew"), certkeeper(ari_env, "renew"), certkeeper(ari_env, "renew", "--force")]
    times = ari.recorded_new_order_times()
    print(f"renew, {fault} with Retry-After 3600: 5 certificates, 3 runs, {len(times)} newOrder request(s)")
    assert [r.returncode for r in runs] == [1, 1, 1]
    assert len(times) == 1, times  # the first renewal got the refusal; nothing more before the Retry-After
    assert serials(store, names) == issued  # every certificate kept
    held = [line for line in runs[2].stderr.splitlines() if "not ordering: the CA's Retry-After" in line]
    assert len(held) == 5, runs[2].stderr
