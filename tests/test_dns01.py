"""DNS-01 over RFC 2136 with TSIG, against a real bind9 that the real Pebble validates through.

Each test uses its own names: the zones and Pebble live for the whole session.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509

from testbench.bind import KEY_NAME, Bind, write_key_file
from testbench.pebble import Pebble
from tests.conftest import CERTKEEPER
from tests.test_issue_cli import Env, Run, dns_names, load_cert, openssl_verify


def issued(store: Path, lineage: str) -> x509.Certificate:
    return load_cert(store / lineage / "cert.pem")


def journal_files(store: Path) -> list[str]:
    directory = store / "dns01-presented"
    return sorted(p.name for p in directory.iterdir()) if directory.is_dir() else []


def ours(bind: Bind, zone: str) -> list[tuple[str, str, str]]:
    """TXT records in ``zone`` other than the one the zone file holds on purpose."""
    return [r for r in bind.txt(zone) if r[2] != '"not-ours"']


def test_wildcard_and_apex_in_one_certificate(
    dns_env: Env, store: Path, bind: Bind, dns_pebble: Pebble, certkeeper: Run, tmp_path: Path
) -> None:
    result = certkeeper(dns_env, "issue", "*.wild.example.test", "wild.example.test")
    assert result.returncode == 0, result.stderr
    cert = issued(store, "_.wild.example.test")
    assert dns_names(cert) == {"*.wild.example.test", "wild.example.test"}
    verified = openssl_verify(dns_pebble.root_pem(), store / "_.wild.example.test", tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    # Both TXT values under _acme-challenge.wild.example.test were presented and both are gone.
    assert ours(bind, "example.test") == []
    assert journal_files(store) == []
    log = (bind.workdir / "named.log").read_text()
    assert log.count("adding an RR at '_acme-challenge.wild.example.test' TXT") == 2


def test_a_value_that_is_not_ours_stays(dns_env: Env, store: Path, bind: Bind, certkeeper: Run) -> None:
    result = certkeeper(dns_env, "issue", "keep.example.test")
    assert result.returncode == 0, result.stderr
    assert bind.txt("example.test") == [("_acme-challenge.keep.example.test", "TXT", '"not-ours"')]


def test_cname_delegated_name_is_updated_in_the_target_zone(
    dns_env: Env, store: Path, bind: Bind, certkeeper: Run
) -> None:
    result = certkeeper(dns_env, "issue", "deleg.example.test")
    assert result.returncode == 0, result.stderr
    assert dns_names(issued(store, "deleg.example.test")) == {"deleg.example.test"}
    log = (bind.workdir / "named.log").read_text()
    assert "updating zone 'validation.test/IN': adding an RR at 'deleg.validation.test' TXT" in log
    assert ours(bind, "validation.test") == [] and ours(bind, "example.test") == []
    # The CNAME itself is untouched.
    assert ("_acme-challenge.deleg.example.test", "CNAME", "deleg.validation.test.") in bind.records("example.test")


def test_twenty_wildcards_at_once_leave_no_txt_record(
    dns_env: Env, store: Path, bind: Bind, certkeeper: Run, tmp_path: Path
) -> None:
    names = tmp_path / "names.txt"
    names.write_text("".join(f"*.w{i}.example.test w{i}.example.test\n" for i in range(20)))
    result = certkeeper(dns_env, "issue", "--file", str(names), "--concurrency", "8", timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
    for i in range(20):
        assert dns_names(issued(store, f"_.w{i}.example.test")) == {f"*.w{i}.example.test", f"w{i}.example.test"}
    assert ours(bind, "example.test") == []
    assert journal_files(store) == []


def test_dns_for_one_zone_http_for_the_rest(dns_env: Env, store: Path, bind: Bind, certkeeper: Run) -> None:
    result = certkeeper(dns_env, "issue", "--dns-zone", "example.test", "*.mix.example.test", "web.http.test")
    assert result.returncode == 0, result.stderr
    assert dns_names(issued(store, "_.mix.example.test")) == {"*.mix.example.test", "web.http.test"}
    log = (bind.workdir / "named.log").read_text()
    assert "'_acme-challenge.mix.example.test' TXT" in log
    assert "_acme-challenge.web.http.test" not in log  # proven over HTTP-01


# -- refusals and failures: one clear line, nothing left behind ---------------------------------------


def assert_nothing_left(store: Path, bind: Bind) -> None:
    assert not list(store.rglob("cert.pem")) and not list(store.rglob("privkey.pem"))
    assert journal_files(store) == []
    for zone in ("example.test", "validation.test", "http.test"):
        assert ours(bind, zone) == []


@pytest.mark.parametrize(
    ("key_name", "secret", "expected"),
    [
        (KEY_NAME, "c2VjcmV0IHRoYXQgaXMgbm90IHRoZSBzZXJ2ZXIncyBrZXkK", "BADSIG"),
        ("no-such-key", "c2VjcmV0IHRoYXQgaXMgbm90IHRoZSBzZXJ2ZXIncyBrZXkK", "BADKEY"),
    ],
    ids=["wrong-secret", "unknown-key-name"],
)
def test_wrong_tsig_key(
    dns_env: Env, store: Path, bind: Bind, certkeeper: Run, tmp_path: Path, key_name: str, secret: str, expected: str
) -> None:
    key = write_key_file(tmp_path / "wrong.key", key_name, secret)
    result = certkeeper({**dns_env, "CERTKEEPER_TSIG_KEY_FILE": str(key)}, "issue", "tsig.example.test")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert f"refused the TSIG key {key_name!r} ({expected}" in errors[0]
    assert "--tsig-key-file" in errors[0]
    assert secret not in result.stderr + result.stdout
    assert_nothing_left(store, bind)


def test_zone_that_does_not_exist(dns_env: Env, store: Path, bind: Bind, certkeeper: Run) -> None:
    result = certkeeper(dns_env, "issue", "www.nozone.test")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert f"DNS server {bind.server} serves no zone holding _acme-challenge.www.nozone.test" in errors[0]
    assert_nothing_left(store, bind)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """A UDP and TCP port that accept but never answer."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    port = udp.getsockname()[1]
    tcp = socket.socket()
    tcp.bind(("127.0.0.1", port))
    tcp.listen(16)
    try:
        yield f"127.0.0.1:{port}"
    finally:
        udp.close()
        tcp.close()


def test_server_that_does_not_answer(
    dns_env: Env, store: Path, bind: Bind, certkeeper: Run, silent_server: str
) -> None:
    env = {**dns_env, "CERTKEEPER_DNS_SERVER": silent_server}
    result = certkeeper(env, "issue", "--dns-timeout", "1", "quiet.example.test")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert f"DNS server {silent_server} did not answer" in errors[0] and "within 1 s" in errors[0]
    assert_nothing_left(store, bind)


def test_propagation_timeout_fails_and_takes_the_record_out(
    dns_env: Env, store: Path, bind: Bind, certkeeper: Run
) -> None:
    # slow.test's second name server (127.0.0.2) never answers, so the record never reaches every server.
    result = certkeeper(dns_env, "issue", "--dns-propagation-timeout", "1", "www2.slow.test")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert (
        f"the TXT record _acme-challenge.www2.slow.test was not served by 127.0.0.2:{bind.port} within 1 s"
        in (errors[0])
    )
    log = (bind.workdir / "named.log").read_text()
    assert "adding an RR at '_acme-challenge.www2.slow.test' TXT" in log  # it was presented...
    assert bind.txt("slow.test") == []  # ...and taken out after the failure
    assert journal_files(store) == []


@pytest.mark.parametrize(
    "dns_args",
    [[], ["--dns", "rfc2136", "--dns-zone", "other.test"]],
    ids=["no-dns-solver", "dns-solver-for-another-zone"],
)
def test_wildcard_without_a_dns_solver_is_refused_before_any_order(
    env: Env, store: Path, certkeeper: Run, bind: Bind, dns_args: list[str]
) -> None:
    extra = ["--dns-server", bind.server, "--tsig-key-file", str(bind.key_file)] if dns_args else []
    result = certkeeper(env, "issue", *dns_args, *extra, "*.nodns.test", "nodns.test")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "certkeeper: error: '*.nodns.test' is a wildcard name and no DNS-01 solver covers it: configure a DNS-01 "
        "solver for it (e.g. --dns rfc2136 --dns-server HOST:PORT --tsig-key-file FILE, with --dns-zone nodns.test "
        "or no --dns-zone)"
    ]
    assert not store.exists()  # not even an account was registered


def test_a_malformed_key_file_is_refused(env: Env, store: Path, certkeeper: Run, bind: Bind, tmp_path: Path) -> None:
    bad = tmp_path / "bad.key"
    bad.write_text("this is not a key\n")
    result = certkeeper(env, "issue", "--dns", "rfc2136", "--dns-server", bind.server, "--tsig-key-file", str(bad),
                        "k.example.test")  # fmt: skip
    assert result.returncode == 2
    assert f"{bad} is not a TSIG key file" in result.stderr
    assert not store.exists()


# -- a run killed with records out there ---------------------------------------------------------------


def test_records_of_a_killed_run_are_removed_by_the_next_run(dns_env: Env, store: Path, bind: Bind) -> None:
    # slow.test names a second server that never answers, so the first run waits for propagation with its
    # record presented; it is killed there, and the next run (for another name) takes the record out.
    first = subprocess.Popen(
        [CERTKEEPER, "issue", "--dns-propagation-timeout", "300", "www.slow.test"],
        env=dns_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 60
        while not bind.txt("slow.test") and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert [r[0] for r in bind.txt("slow.test")] == ["_acme-challenge.www.slow.test"]
    finally:
        os.kill(first.pid, signal.SIGKILL)
        first.communicate()
    assert len(journal_files(store)) == 2  # the dead run's journal and its lock file
    assert bind.txt("slow.test"), "the killed run cannot have cleaned up"

    second = subprocess.run([CERTKEEPER, "issue", "after.example.test"], env=dns_env, capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    assert second.returncode == 0, second.stderr
    assert "removed 1 TXT record(s) an interrupted run left" in second.stderr
    assert bind.txt("slow.test") == []
    assert journal_files(store) == []


# -- which solver proves which name (cert-manager's selector rules) -------------------------------------


class Named:
    def __init__(self, name: str, challenge_type: str) -> None:
        self.name, self.challenge_type = name, challenge_type

    def describe(self) -> str:
        return self.name

    def prepare(self, identifiers: object) -> None: ...

    def present(self, *args: object) -> None: ...

    def cleanup(self, *args: object) -> None: ...


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("www.example.com", "exact-name"),  # dnsNames beats every zone
        ("api.example.com", "long-zone"),  # the longer matching zone wins
        ("a.sub.example.com", "long-zone"),
        ("*.sub.example.com", "long-zone"),
        ("b.example.com", "short-zone"),
        ("*.example.com", "short-zone"),
        ("other.org", "http-catch-all"),
        ("*.other.org", None),  # only DNS-01 proves wildcards, and no DNS solver matches other.org
    ],
)
def test_solver_choice_follows_cert_manager_selectors(name: str, expected: str | None) -> None:
    from certkeeper.solvers.base import DNS01, HTTP01, Selector, SolverEntry, Solvers

    solvers = Solvers(
        [
            SolverEntry(Named("http-catch-all", HTTP01)),
            SolverEntry(Named("short-zone", DNS01), Selector(dns_zones=("example.com",))),
            SolverEntry(Named("long-zone", DNS01), Selector(dns_zones=("sub.example.com", "api.example.com"))),
            SolverEntry(Named("exact-name", HTTP01), Selector(dns_names=("www.example.com",))),
        ]
    )
    chosen = solvers.for_name(name)
    assert (chosen.describe() if chosen else None) == expected


def test_renew_proves_names_the_way_they_were_issued(dns_env: Env, store: Path, bind: Bind, certkeeper: Run) -> None:
    issued_result = certkeeper(dns_env, "issue", "*.again.example.test")
    assert issued_result.returncode == 0, issued_result.stderr
    first = issued(store, "_.again.example.test").serial_number
    # No DNS options this time: renew takes them from what was stored with the certificate.
    plain = {k: v for k, v in dns_env.items() if not k.startswith(("CERTKEEPER_DNS", "CERTKEEPER_TSIG"))}
    renewed = certkeeper(plain, "renew", "--force")
    assert renewed.returncode == 0, renewed.stderr
    assert issued(store, "_.again.example.test").serial_number != first
    log = (bind.workdir / "named.log").read_text()
    assert log.count("adding an RR at '_acme-challenge.again.example.test' TXT") == 2
    meta = (store / "_.again.example.test" / "meta.json").read_text()
    assert str(bind.key_file) in meta and bind.key_secret not in meta
    assert ours(bind, "example.test") == []


def test_a_cname_loop_is_refused_before_any_order(dns_env: Env, store: Path, bind: Bind, certkeeper: Run) -> None:
    result = certkeeper(dns_env, "issue", "loop.example.test")
    assert result.returncode != 0
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert "the CNAMEs from _acme-challenge.loop.example.test loop" in errors[0]
    assert_nothing_left(store, bind)


def test_a_running_process_keeps_its_records_while_another_run_starts(
    dns_env: Env, store: Path, bind: Bind, certkeeper: Run
) -> None:
    # The first run waits (slow.test never propagates everywhere) with its record out; a second run on the
    # same store starts, cleans leftovers, and must leave the live run's record alone.
    first = subprocess.Popen(
        [CERTKEEPER, "issue", "--dns-propagation-timeout", "20", "www3.slow.test"],
        env=dns_env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not bind.txt("slow.test") and time.monotonic() < deadline and first.poll() is None:
            time.sleep(0.1)
        assert bind.txt("slow.test"), "the first run did not present its record"
        second = certkeeper(dns_env, "issue", "alongside.example.test")
        assert second.returncode == 0, second.stderr
        assert "interrupted run" not in second.stderr
        assert [r[0] for r in bind.txt("slow.test")] == ["_acme-challenge.www3.slow.test"]
        assert first.poll() is None, "the first run should still be waiting"
    finally:
        first.terminate()
        _, first_err = first.communicate(timeout=60)
    # Stopped by SIGTERM, the run takes its record out on the way and says so.
    assert first.returncode == 130
    assert "stopped by SIGTERM" in first_err
    assert bind.txt("slow.test") == [], first_err


# -- the plain-dict seam an Issuer's ``solvers:`` will use ------------------------------------------------


@pytest.mark.parametrize(
    ("config", "says"),
    [
        ([{"webhook": {}}], "solver 1: give exactly one of http01, dns01 or tlsalpn01"),
        ([{"http01": {}}, {"dns01": {}}], "solver 2: dns01 needs one provider"),
        ([{"dns01": {"rfc2136": {}}}], "solver 1: rfc2136 needs nameserver"),
        (
            [{"dns01": {"rfc2136": {"nameserver": "127.0.0.1:53", "tsigKeyName": "k"}}}],
            "needs tsigKeyName and tsigSecret",
        ),
        ([{"http01": {}, "selector": {"dnsLabels": ["x"]}}], "selector takes dnsNames and dnsZones"),
        ([{"dns01": {"rfc2136": {"nameserver": "127.0.0.1:53", "propagationTimeout": "soon"}}}], "not a number"),
        ([{"dns01": {"lexicon": {"provider": "localzone"}}}], "lexicon needs nameserver"),
    ],
)
def test_solver_configuration_errors_name_the_entry(config: list[dict[str, object]], says: str) -> None:
    from certkeeper.errors import ConfigError
    from certkeeper.solvers.config import build_solvers
    from certkeeper.solvers.http01 import ChallengeStore

    with pytest.raises(ConfigError) as caught:
        build_solvers(config, ChallengeStore())
    assert says in str(caught.value) and "\n" not in str(caught.value)


def test_inline_tsig_secret_is_never_stored_with_the_certificate() -> None:
    from certkeeper.solvers.config import SolverSetup

    entry = {"dns01": {"rfc2136": {"nameserver": "127.0.0.1:53", "tsigKeyName": "k", "tsigSecret": "c2VjcmV0"}}}
    assert SolverSetup((entry,)).recorded() == [
        {"dns01": {"rfc2136": {"nameserver": "127.0.0.1:53", "tsigKeyName": "k"}}}
    ]


def test_an_update_the_server_refuses(dns_env: Env, store: Path, bind: Bind, certkeeper: Run) -> None:
    # lexzone.com takes no dynamic updates (no update-policy): bind answers REFUSED.
    result = certkeeper(dns_env, "issue", "refused.lexzone.com")
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert (
        f"DNS server {bind.server} answered REFUSED to the update of TXT _acme-challenge.refused.lexzone.com"
        in (errors[0])
    )
    assert "update-policy" in errors[0]
    assert bind.txt("lexzone.com") == [] and journal_files(store) == []
