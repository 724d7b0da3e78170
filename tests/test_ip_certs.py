"""IP-address certificates (RFC 8738) against the real Pebble: IPv4 and IPv6, over HTTP-01 and TLS-ALPN-01."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from cryptography import x509

from testbench.ari import AcmeFront
from testbench.bind import Bind
from testbench.pebble import Pebble
from tests.test_issue_cli import Env, Run, load_cert, openssl_verify


def ip_sans(path: Path) -> set[str]:
    san = load_cert(path).extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}


def test_ipv4_certificate_over_http01(pebble: Pebble, env: Env, store: Path, certkeeper: Run, tmp_path: Path) -> None:
    result = certkeeper(env, "issue", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert ip_sans(store / "127.0.0.1" / "cert.pem") == {"127.0.0.1"}
    verified = openssl_verify(pebble.root_pem(), store / "127.0.0.1", tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    status = certkeeper(env, "status")
    assert "127.0.0.1" in status.stdout


def test_ipv6_certificate_over_http01(pebble: Pebble, env: Env, store: Path, certkeeper: Run) -> None:
    result = certkeeper(env, "issue", "--http-bind", f"[::1]:{pebble.http_port}", "[::1]")
    assert result.returncode == 0, result.stderr
    assert ip_sans(store / "__1" / "cert.pem") == {"::1"}


def test_ipv4_certificate_over_tls_alpn_with_port_80_closed(
    pebble: Pebble, env: Env, store: Path, certkeeper: Run, http_port_taken: None
) -> None:
    result = certkeeper(env, "issue", "--tls-alpn-bind", f"127.0.0.1:{pebble.tls_port}", "127.0.0.1", "alpn-ip.test")
    assert result.returncode == 0, result.stderr
    cert = load_cert(store / "127.0.0.1" / "cert.pem")
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.IPAddress) == [ipaddress.ip_address("127.0.0.1")]
    assert san.get_values_for_type(x509.DNSName) == ["alpn-ip.test"]


def test_an_address_is_never_proven_over_dns01(dns_env: Env, store: Path, bind: Bind, certkeeper: Run) -> None:
    # DNS-01 for every name, yet the address goes to HTTP-01 and the DNS name to DNS-01.
    result = certkeeper(dns_env, "issue", "127.0.0.1", "ipmix.example.test")
    assert result.returncode == 0, result.stderr
    assert ip_sans(store / "127.0.0.1" / "cert.pem") == {"127.0.0.1"}
    log = (bind.workdir / "named.log").read_text()
    assert "_acme-challenge.ipmix.example.test" in log
    assert "in-addr.arpa" not in log and "_acme-challenge.127" not in log


def test_short_lived_profile_is_chosen_for_addresses_when_offered(
    ari: AcmeFront, ari_env: Env, certkeeper: Run
) -> None:
    ari.profiles = {"classic": "the default", "shortlived": "about 6 days"}
    result = certkeeper(ari_env, "issue", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert [o.get("profile") for o in ari.recorded_orders()] == ["shortlived"]
    assert "an IP-address certificate; using the CA's 'shortlived' profile" in result.stderr
    assert [o.get("identifiers") for o in ari.recorded_orders()] == [[{"type": "ip", "value": "127.0.0.1"}]]


def test_no_profile_is_invented_when_the_ca_offers_none(ari: AcmeFront, ari_env: Env, certkeeper: Run) -> None:
    result = certkeeper(ari_env, "issue", "--force", "127.0.0.1")
    assert result.returncode == 0, result.stderr
    assert [o.get("profile") for o in ari.recorded_orders()] in ([None], [""])
