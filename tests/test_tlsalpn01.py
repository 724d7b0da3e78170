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


def _status(port: int, query: str = "") -> dict[str, object]:
    import http.client
    import json

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("GET", "/certkeeper/tls-alpn-01" + query)
        response = conn.getresponse()
        assert response.status == 200
        return dict(json.loads(response.read()))
    finally:
        conn.close()


def test_the_listener_tells_a_proxy_which_names_are_presented() -> None:
    import threading

    from certkeeper.solvers.base import AccountKey, Challenge, Identifier
    from certkeeper.solvers.tlsalpn01 import TlsAlpn01Solver

    solver = TlsAlpn01Solver("127.0.0.1:0", check="off")
    solver.prepare([])
    assert solver.port is not None
    try:
        idle = _status(solver.port)
        assert idle["names"] == []
        # A proxy holding a request open hears of the challenge as soon as it is presented.
        heard: list[dict[str, object]] = []
        waiter = threading.Thread(
            target=lambda: heard.append(_status(solver.port or 0, f"?since={idle['generation']}&wait=25"))
        )
        waiter.start()
        solver.present(Identifier("told.test"), Challenge("tls-alpn-01", "t" * 43), AccountKey("thumb"))
        waiter.join(30)
        assert heard and heard[0]["names"] == ["told.test"]
        solver.cleanup(Identifier("told.test"), Challenge("tls-alpn-01", "t" * 43), AccountKey("thumb"))
        assert _status(solver.port)["names"] == []
    finally:
        solver.close()


def test_the_self_check_refuses_to_answer_while_another_certificate_is_shown() -> None:
    from certkeeper.errors import ConfigError
    from certkeeper.solvers.base import AccountKey, Challenge, Identifier
    from certkeeper.solvers.tlsalpn01 import TlsAlpn01Solver

    # Where the CA would connect, something else answers acme-tls/1 for the name (a stale responder).
    stale = TlsAlpn01Solver("127.0.0.1:0", check="off")
    ident = Identifier("checked.test")
    stale.present(ident, Challenge("tls-alpn-01", "s" * 43), AccountKey("other"))
    ours = TlsAlpn01Solver("127.0.0.1:0", check=f"127.0.0.1:{stale.port}", check_timeout=1.5)
    try:
        with pytest.raises(ConfigError) as raised:
            ours.present(ident, Challenge("tls-alpn-01", "t" * 43), AccountKey("thumb"))
        message = str(raised.value)
        assert f"127.0.0.1:{stale.port} did not show certkeeper's TLS-ALPN-01 certificate for checked.test" in message
        assert "another certificate" in message and "the CA was not asked to validate" in message
    finally:
        ours.close()
        stale.close()


def test_the_self_check_answers_anyway_when_nothing_answers_there(caplog: pytest.LogCaptureFixture) -> None:
    from certkeeper.solvers.base import AccountKey, Challenge, Identifier
    from certkeeper.solvers.tlsalpn01 import TlsAlpn01Solver

    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
    solver = TlsAlpn01Solver("127.0.0.1:0", check=f"127.0.0.1:{closed.getsockname()[1]}")
    try:
        solver.present(Identifier("nat.test"), Challenge("tls-alpn-01", "t" * 43), AccountKey("thumb"))
    finally:
        solver.close()
        closed.close()
    assert "cannot check TLS-ALPN-01 for nat.test" in caplog.text
    assert "answering the challenge anyway" in caplog.text


def test_tls_alpn_check_is_refused_without_a_listener_or_as_no_address() -> None:
    from certkeeper.errors import ConfigError
    from certkeeper.solvers.config import build_solvers, cli_config
    from certkeeper.solvers.http01 import ChallengeStore

    with pytest.raises(ConfigError, match="--tls-alpn-check needs --tls-alpn-bind"):
        cli_config(None, None, None, tls_alpn_check="127.0.0.1:443")
    config = cli_config(None, None, None, tls_alpn_bind="127.0.0.1:8443", tls_alpn_check="where the CA connects")
    with pytest.raises(ConfigError, match="is not HOST:PORT"):
        build_solvers(config, ChallengeStore())
