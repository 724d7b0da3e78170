"""What the CA asks of us: rate limits honoured (Retry-After, no re-order), profiles chosen from its offer."""

from __future__ import annotations

import datetime
import json
from pathlib import Path

from testbench.ari import AcmeFront
from testbench.command import Env, Run


def new_orders_sent(ari: AcmeFront) -> int:
    return sum(1 for method, path in ari.recorded_requests() if method == "POST" and path.endswith("/order-plz"))


def test_rate_limited_order_waits_for_retry_after_and_is_not_sent_again(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    ari.rate_limit_retry_after = 7200
    first = certkeeper(ari_env, "issue", "limited.test")
    assert first.returncode == 1
    lines = first.stderr.strip().splitlines()
    assert len(lines) == 1 and "CA error rateLimited" in lines[0], first.stderr
    assert "certkeeper will wait" in lines[0]
    assert not (store / "limited.test" / "cert.pem").exists()
    sent = new_orders_sent(ari)
    assert sent == 1, "a rate-limited order must not be retried in a loop"

    # The CA said two hours; the planner's own first backoff is one minute. The CA wins.
    row = json.loads(certkeeper(ari_env, "status", "--json").stdout)[0]
    next_check = datetime.datetime.fromisoformat(row["next_check"])
    wait = next_check - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(hours=1, minutes=55) < wait <= datetime.timedelta(hours=2)

    # Running again at once, even with the limit lifted, sends nothing to the CA.
    ari.rate_limit_retry_after = None
    again = certkeeper(ari_env, "issue", "limited.test")
    assert again.returncode == 1
    assert "not ordered" in again.stderr and "rateLimited" in again.stderr
    assert new_orders_sent(ari) == sent


def test_offered_profile_is_requested(ari: AcmeFront, ari_env: Env, certkeeper: Run) -> None:
    ari.profiles = {"classic": "the default", "shortlived": "about 6 days"}
    result = certkeeper(ari_env, "issue", "--profile", "shortlived", "profile.test")
    assert result.returncode == 0, result.stderr
    assert [o.get("profile") for o in ari.recorded_orders()] == ["shortlived"]


def test_profile_the_ca_does_not_offer_is_refused_before_any_order(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    ari.profiles = {"classic": "the default"}
    result = certkeeper(ari_env, "issue", "--profile", "tlsserver", "noprofile.test")
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "does not offer the profile 'tlsserver'" in lines[0] and "classic" in lines[0]
    assert new_orders_sent(ari) == 0
    # Nothing reached the CA, so nothing holds the next try back once the flag is fixed.
    fixed = certkeeper(ari_env, "issue", "--profile", "classic", "noprofile.test")
    assert fixed.returncode == 0, fixed.stderr
    assert (store / "noprofile.test" / "cert.pem").exists()
