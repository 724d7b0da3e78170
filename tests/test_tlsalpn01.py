"""TLS-ALPN-01 (RFC 8737) on a host: the built-in listener against the real Pebble, with port 80 closed."""

from __future__ import annotations

import base64
import socket
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from testbench.pebble import Pebble
from tests.test_issue_cli import Env, Run, dns_names, load_cert, openssl_verify


def test_issue_over_tls_alpn_with_port_80_closed(
    pebble: Pebble, env: Env, store: Path, certkeeper: Run, tmp_path: Path, http_port_taken: None
) -> None:
    bind = f"127.0.0.1:{pebble.tls_port}"
    result = certkeeper(env, "issue", "--tls-alpn-bind", bind, "alpn.test", "www.alpn.test")
    assert result.returncode == 0, result.stderr
    assert dns_names(load_cert(store / "alpn.test" / "cert.pem")) == {"alpn.test", "www.alpn.test"}
    verified = openssl_verify(pebble.root_pem(), store / "alpn.test", tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr


def test_tls_alpn_port_in_use_is_refused_before_any_order(
    pebble: Pebble, env: Env, store: Path, certkeeper: Run
) -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen(1)
    port = holder.getsockname()[1]
    try:
        result = certkeeper(env, "issue", "--tls-alpn-bind", f"127.0.0.1:{port}", "busy.alpn.test")
    finally:
        holder.close()
    assert result.returncode == 1
    errors = [line for line in result.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, result.stderr
    assert f"cannot listen on 127.0.0.1:{port} for TLS-ALPN-01" in errors[0]
    assert not list(store.rglob("cert.pem"))


def test_listener_shows_the_validation_certificate_only_for_acme_tls() -> None:
    from certkeeper.crypto import ACME_IDENTIFIER_OID
    from certkeeper.solvers.base import AccountKey, Challenge, Identifier, dns01_value
    from certkeeper.solvers.tlsalpn01 import TlsAlpn01Solver

    solver = TlsAlpn01Solver("127.0.0.1:0")
    ident, challenge, account = Identifier("shown.test"), Challenge("tls-alpn-01", "t" * 43), AccountKey("thumb")
    solver.present(ident, challenge, account)
    assert solver.port is not None
    client = ssl.create_default_context()
    client.check_hostname, client.verify_mode = False, ssl.CERT_NONE
    client.set_alpn_protocols(["acme-tls/1"])
    try:
        with (
            socket.create_connection(("127.0.0.1", solver.port)) as raw,
            client.wrap_socket(raw, server_hostname="shown.test") as tls,
        ):
            assert tls.selected_alpn_protocol() == "acme-tls/1"
            der = tls.getpeercert(binary_form=True)
        cert = x509.load_der_x509_certificate(der)
        extension = cert.extensions.get_extension_for_oid(ACME_IDENTIFIER_OID)
        assert extension.critical
        digest = extension.value.value[2:]
        assert base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == dns01_value(f"{'t' * 43}.thumb")
        assert dns_names(cert) == {"shown.test"}
        # A name not presented gets no certificate at all.
        with socket.create_connection(("127.0.0.1", solver.port)) as raw, pytest.raises(ssl.SSLError):
            client.wrap_socket(raw, server_hostname="other.test")
        solver.cleanup(ident, challenge, account)
        with socket.create_connection(("127.0.0.1", solver.port)) as raw, pytest.raises(ssl.SSLError):
            client.wrap_socket(raw, server_hostname="shown.test")
    finally:
        solver.close()
