"""DNS-01 through dns-lexicon, for real: its zone-file provider (localzone) edits a zone bind9 serves.

bind reloads the zone when the file changes, as a provider's backend publishes; certkeeper finds the
zone and checks propagation at bind, and Pebble validates through it.
"""

from __future__ import annotations

from pathlib import Path

from testbench.bind import Bind
from tests.test_issue_cli import Env, Run, dns_names, load_cert


def lexicon_env(dns_env: Env, bind: Bind) -> Env:
    env = {k: v for k, v in dns_env.items() if k != "CERTKEEPER_TSIG_KEY_FILE"}
    env.update(CERTKEEPER_DNS="lexicon:localzone", LEXICON_LOCALZONE_FILENAME=str(bind.zone_file("lexzone.com")))
    return env


def test_wildcard_and_apex_through_lexicon_zone_file_provider(
    dns_env: Env, store: Path, bind: Bind, certkeeper: Run
) -> None:
    with bind.reloading_on_change("lexzone.com"):
        result = certkeeper(lexicon_env(dns_env, bind), "issue", "*.lexzone.com", "lexzone.com")
    assert result.returncode == 0, result.stderr
    assert dns_names(load_cert(store / "_.lexzone.com" / "cert.pem")) == {"*.lexzone.com", "lexzone.com"}
    assert "TXT" not in bind.zone_file("lexzone.com").read_text()
    assert bind.txt("lexzone.com") == []
    meta = (store / "_.lexzone.com" / "meta.json").read_text()
    assert '"provider": "localzone"' in meta


def test_lexicon_needs_a_server_for_lookups(env: Env, store: Path, certkeeper: Run) -> None:
    result = certkeeper(env, "issue", "--dns", "lexicon:localzone", "*.lexzone.com")
    assert result.returncode == 2
    assert "--dns lexicon:localzone needs --dns-server HOST:PORT" in result.stderr
    assert not store.exists()
