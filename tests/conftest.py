"""Fixtures for the core tests: one real Pebble for the session, an ARI front over it, and the CLI.

- ``pebble`` (session): a running ``testbench.pebble.Pebble``.
- ``front`` (session) / ``ari`` (per test, reset): ``testbench.ari.AcmeFront`` over ``pebble``.
- ``private_front``: an ``AcmeFront`` over a Pebble of the test's own (which the test may restart).
- ``store``: a fresh store directory (not created: certkeeper makes it).
- ``env`` / ``ari_env``: the environment that points ``certkeeper`` at ``pebble`` / ``ari`` and ``store``.
- ``make_env(directory_url, ca_bundle, http_port, store)``: the same for a special Pebble.
- ``certkeeper(env, *args)``: runs the ``certkeeper`` command as a user would; returns the CompletedProcess.
- ``bind`` (session): a real BIND 9 (``testbench.bind.Bind``) serving the DNS-01 test zones (see ``DNS_ZONES``).
- ``dns_pebble`` (session): a second Pebble that resolves names and TXT records at ``bind``.
- ``dns_env``: the environment for ``dns_pebble`` plus ``--dns rfc2136`` at ``bind`` with its TSIG key.
"""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from testbench.ari import AcmeFront, start_front
from testbench.ari import private_front as own_front
from testbench.bind import Bind, start_bind
from testbench.command import CERTKEEPER
from testbench.pebble import Pebble, start_pebble

# The zones the session's bind9 serves. Every zone has ns1 and a wildcard A at 127.0.0.1 (HTTP-01 reaches
# the local responder); example.test delegates one name's validation to validation.test by CNAME and holds
# a TXT value that is not certkeeper's, and a CNAME loop; slow.test names a second server that never answers.
DNS_ZONES = {
    "example.test": "\n".join(
        [
            "_acme-challenge.deleg IN CNAME deleg.validation.test.",
            '_acme-challenge.keep IN TXT "not-ours"',
            "_acme-challenge.loop IN CNAME loop2.example.test.",
            "loop2 IN CNAME _acme-challenge.loop.example.test.",
        ]
    ),
    "validation.test": "",
    "http.test": "",
    "slow.test": "@ IN NS ns2.slow.test.\nns2 IN A 127.0.0.2",
    # Takes no updates: lexicon's zone-file provider edits its file and bind reloads it (see test_lexicon.py).
    "lexzone.com": "",
}
STATIC_ZONES = ("lexzone.com",)

Env = dict[str, str]
MakeEnv = Callable[[str, "str | Path", int, Path], Env]
Run = Callable[..., "subprocess.CompletedProcess[str]"]


def _make_env(directory_url: str, ca_bundle: str | Path, http_port: int, store: Path) -> Env:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTKEEPER_")}
    env.update(
        CERTKEEPER_SERVER=directory_url,
        CERTKEEPER_CA_BUNDLE=str(ca_bundle),
        CERTKEEPER_HTTP_BIND=f"127.0.0.1:{http_port}",
        CERTKEEPER_STORE=str(store),
        COLUMNS="200",
    )
    return env


def _run(env: Env, *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([CERTKEEPER, *args], env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    server = start_pebble(tmp_path_factory.mktemp("pebble"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def front(pebble: Pebble) -> Iterator[AcmeFront]:
    server = start_front(pebble)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def ari(front: AcmeFront) -> AcmeFront:
    front.reset()
    return front


@pytest.fixture
def private_front(tmp_path: Path) -> Iterator[AcmeFront]:
    with own_front(tmp_path / "pebble") as server:
        yield server


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def make_env() -> MakeEnv:
    return _make_env


@pytest.fixture
def env(pebble: Pebble, store: Path) -> Env:
    return _make_env(pebble.directory_url, pebble.ca_bundle, pebble.http_port, store)


@pytest.fixture
def ari_env(ari: AcmeFront, store: Path) -> Env:
    return _make_env(ari.directory_url, ari.ca_bundle, ari.http_port, store)


@pytest.fixture
def certkeeper() -> Run:
    return _run


@pytest.fixture(scope="session")
def bind(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Bind]:
    server = start_bind(tmp_path_factory.mktemp("bind"), DNS_ZONES, static=STATIC_ZONES)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def dns_pebble(bind: Bind, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    # No authorization reuse: every order must present its records (tests count them in bind's log).
    server = start_pebble(tmp_path_factory.mktemp("dns-pebble"), dns_server=bind.server, env={"PEBBLE_AUTHZREUSE": "0"})
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def dns_env(dns_pebble: Pebble, bind: Bind, store: Path) -> Env:
    env = _make_env(dns_pebble.directory_url, dns_pebble.ca_bundle, dns_pebble.http_port, store)
    env.update(CERTKEEPER_DNS="rfc2136", CERTKEEPER_DNS_SERVER=bind.server, CERTKEEPER_TSIG_KEY_FILE=str(bind.key_file))
    return env


@pytest.fixture
def http_port_taken(pebble: Pebble) -> Iterator[None]:
    """Something else holds the HTTP-01 port: an HTTP-01 responder could not start there."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", pebble.http_port))
    sock.listen(1)
    try:
        yield
    finally:
        sock.close()
