"""The TLS-ALPN-01 front of ``certkeeper proxy`` comes and goes with the challenges: at rest the HTTPS server
has the port to itself; while certkeeper's responder (TLS_ALPN_SERVICE) presents a name, nginx's ssl_preread
front sends ``acme-tls/1`` to it. certkeeper answers the CA only once the port shows its validation
certificate (the solver's self-check), so the races below are seen the way the CA would see them."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from proxy_helpers import HOST, LocalCA, RunningProxy, StartProxy, free_port, https_get, wait_for, write_plain

from certkeeper.errors import ConfigError
from certkeeper.solvers.base import AccountKey, Challenge, Identifier
from certkeeper.solvers.tlsalpn01 import ALPN, TlsAlpn01Solver

ACME_IDENTIFIER = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.31")
ACCOUNT = AccountKey("thumbprint")


def validation_serial(port: int, name: str = HOST) -> int | None:
    """The certificate shown to the CA for ``name`` (ALPN acme-tls/1 only): its serial if it is a
    TLS-ALPN-01 validation certificate, None if the port refuses acme-tls/1 (the HTTPS server)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    context.set_alpn_protocols([ALPN])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        try:
            tls = context.wrap_socket(raw, server_hostname=name)
        except ssl.SSLError:
            return None
        with tls:
            cert = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True) or b"")
    assert cert.extensions.get_extension_for_oid(ACME_IDENTIFIER).critical
    return cert.serial_number


def front_on(proxy: RunningProxy) -> bool:
    return "ssl_preread on;" in (proxy.run_dir / "nginx.conf").read_text()


def front_off(proxy: RunningProxy) -> bool:
    """The proxy says it took the front off (after nginx's old workers stopped accepting) as often as
    it said it put it on."""
    log = proxy.log()
    return not front_on(proxy) and log.count("has port") == log.count("acme-tls/1 on port")


def serves_https(proxy: RunningProxy, ca: LocalCA) -> bool:
    reply = https_get(proxy.https_port, ca.client_context(), "/normal", alpn=["http/1.1"])
    return reply.status == 200 and json.loads(reply.body)["headers"]["X-Real-IP"] == "127.0.0.1"


@pytest.fixture
def responder() -> Iterator[TlsAlpn01Solver]:
    solver = TlsAlpn01Solver(f"127.0.0.1:{free_port()}")
    solver.prepare([])
    yield solver
    solver.close()


@pytest.fixture
def alpn_proxy(start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA, responder: TlsAlpn01Solver) -> RunningProxy:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    proxy = start_proxy(ENABLE_SSL="true", TLS_ALPN_SERVICE=responder.bind)
    wait_for(lambda: serves_https(proxy, ca), 15, "HTTPS served")
    responder.check = f"127.0.0.1:{proxy.https_port}"  # where the CA would connect
    return proxy


def challenge(name: str = HOST) -> tuple[Identifier, Challenge]:
    return Identifier(name), Challenge("tls-alpn-01", f"token-{name}")


def test_the_front_is_on_only_while_a_challenge_is_in_flight(
    alpn_proxy: RunningProxy, responder: TlsAlpn01Solver, ca: LocalCA
) -> None:
    assert not front_on(alpn_proxy), "at rest the HTTPS server must have the port to itself"
    assert validation_serial(alpn_proxy.https_port) is None

    identifier, chall = challenge()
    responder.present(identifier, chall, ACCOUNT)  # returns once the port shows the validation certificate
    assert front_on(alpn_proxy)
    assert validation_serial(alpn_proxy.https_port) is not None
    assert serves_https(alpn_proxy, ca), "normal traffic behind the front, with the client's address"

    responder.cleanup(identifier, chall, ACCOUNT)
    wait_for(lambda: front_off(alpn_proxy), 30, "the front taken off after the challenge")
    assert validation_serial(alpn_proxy.https_port) is None, "acme-tls/1 must be refused again"
    assert serves_https(alpn_proxy, ca)
    assert "TLS-ALPN-01 for proxy.test: acme-tls/1 on port" in alpn_proxy.log()


def test_two_challenges_at_once(alpn_proxy: RunningProxy, responder: TlsAlpn01Solver, ca: LocalCA) -> None:
    first, second = challenge("one.proxy.test"), challenge("two.proxy.test")
    errors: list[BaseException] = []

    def present(pair: tuple[Identifier, Challenge]) -> None:
        try:
            responder.present(*pair, ACCOUNT)
        except BaseException as error:  # reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=present, args=(pair,)) for pair in (first, second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    shown = {validation_serial(alpn_proxy.https_port, "one.proxy.test"),
             validation_serial(alpn_proxy.https_port, "two.proxy.test")}  # fmt: skip
    assert None not in shown and len(shown) == 2

    # One done: the other is still in flight, so the front stays.
    responder.cleanup(*first, ACCOUNT)
    time.sleep(6)  # longer than the proxy's linger: it would have dropped the front by now
    assert front_on(alpn_proxy)
    assert validation_serial(alpn_proxy.https_port, "two.proxy.test") is not None
    assert serves_https(alpn_proxy, ca)

    responder.cleanup(*second, ACCOUNT)
    wait_for(lambda: front_off(alpn_proxy), 30, "the front gone after both challenges")
    assert serves_https(alpn_proxy, ca)


def test_a_challenge_arriving_while_the_front_is_being_taken_off(
    alpn_proxy: RunningProxy, responder: TlsAlpn01Solver, ca: LocalCA
) -> None:
    first = challenge("first.proxy.test")
    responder.present(*first, ACCOUNT)
    responder.cleanup(*first, ACCOUNT)
    # The proxy writes the configuration, then reloads nginx: present the next one right then.
    wait_for(lambda: not front_on(alpn_proxy), 30, "the proxy starting to take the front off")
    second = challenge("second.proxy.test")
    responder.present(*second, ACCOUNT)
    assert validation_serial(alpn_proxy.https_port, "second.proxy.test") is not None
    assert serves_https(alpn_proxy, ca)
    responder.cleanup(*second, ACCOUNT)


def test_reloads_during_a_challenge_drop_neither_route(
    alpn_proxy: RunningProxy, responder: TlsAlpn01Solver, ca: LocalCA
) -> None:
    identifier, chall = challenge()
    responder.present(identifier, chall, ACCOUNT)
    shown = validation_serial(alpn_proxy.https_port)
    master = alpn_proxy.master_pid()
    stop = threading.Event()

    def reload_storm() -> None:
        while not stop.is_set():
            os.kill(master, signal.SIGHUP)
            stop.wait(0.15)

    storm = threading.Thread(target=reload_storm)
    storm.start()
    try:
        seen = [validation_serial(alpn_proxy.https_port) for _ in range(40)]
        normal = [serves_https(alpn_proxy, ca) for _ in range(40)]
    finally:
        stop.set()
        storm.join()
    assert set(seen) == {shown}, "a reload in flight must not hand the CA the HTTPS server"
    assert all(normal)
    responder.cleanup(identifier, chall, ACCOUNT)


def test_a_reload_nginx_refuses_keeps_the_old_configuration_serving(
    alpn_proxy: RunningProxy, responder: TlsAlpn01Solver, ca: LocalCA
) -> None:
    # Something in the way of the socket the front's ACME route binds: `nginx -t` passes, the reload fails.
    blocker = alpn_proxy.run_dir / "alpn.sock"
    blocker.mkdir()
    identifier, chall = challenge()
    responder.check_timeout = 8.0
    refusal = re.escape("did not show certkeeper's TLS-ALPN-01 certificate for proxy.test")
    with pytest.raises(ConfigError, match=refusal):
        responder.present(identifier, chall, ACCOUNT)
    said = "cannot put the TLS-ALPN-01 route in front of port"
    wait_for(lambda: said in alpn_proxy.log(), 30, "the proxy saying nginx did not take the front")
    wait_for(lambda: alpn_proxy.log().count("still could not bind()") >= 2, 60, "the proxy trying again")
    assert alpn_proxy.log().count(said) == 1, alpn_proxy.log()
    assert serves_https(alpn_proxy, ca), "the old configuration must keep serving"
    wait_for(lambda: not front_on(alpn_proxy), 15, "nginx.conf describing what nginx runs again")
    assert alpn_proxy.process.poll() is None

    blocker.rmdir()
    responder.check_timeout = 30.0
    responder.present(identifier, chall, ACCOUNT)  # the proxy tries again and gets it in place
    assert validation_serial(alpn_proxy.https_port) is not None
    assert serves_https(alpn_proxy, ca)
    responder.cleanup(identifier, chall, ACCOUNT)


def test_certkeeper_unreachable_the_proxy_serves_https_and_says_so_once(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA
) -> None:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    bind = f"127.0.0.1:{free_port()}"
    proxy = start_proxy(ENABLE_SSL="true", TLS_ALPN_SERVICE=bind)
    wait_for(lambda: serves_https(proxy, ca), 15, "HTTPS served")
    wait_for(lambda: "does not answer" in proxy.log(), 15, "the proxy saying the responder does not answer")
    deadline = time.monotonic() + 4  # several of the watch's 1 s retries
    while time.monotonic() < deadline:
        assert serves_https(proxy, ca)
    assert proxy.log().count("does not answer") == 1, proxy.log()
    assert not front_on(proxy)

    # certkeeper comes up with a challenge: the route appears.
    solver = TlsAlpn01Solver(bind, check=f"127.0.0.1:{proxy.https_port}")
    try:
        identifier, chall = challenge()
        solver.present(identifier, chall, ACCOUNT)
        assert validation_serial(proxy.https_port) is not None
        assert "TLS-ALPN-01 responder at " + bind + " answers" in proxy.log()
    finally:
        solver.close()
    wait_for(lambda: front_off(proxy), 30, "the front gone once certkeeper is gone again")
    assert serves_https(proxy, ca)
    assert proxy.log().count("does not answer") == 2  # once more: it went away again
