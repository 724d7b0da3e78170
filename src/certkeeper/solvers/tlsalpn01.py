"""TLS-ALPN-01 (RFC 8737): a TLS listener that shows the CA a validation certificate per name.

The CA connects to port 443 of the name with ALPN ``acme-tls/1`` and SNI set to the name; this
listener answers with a self-signed certificate carrying the key authorization's digest in the
critical ``acmeIdentifier`` extension, negotiates ``acme-tls/1`` and closes. It is started before the
order (so a port that cannot be bound fails before the CA is asked) and serves only while names
are presented.
"""

from __future__ import annotations

import errno
import ipaddress
import logging
import os
import socket
import ssl
import tempfile
import threading
from collections.abc import Sequence

from certkeeper.crypto import tls_alpn_certificate
from certkeeper.errors import ConfigError
from certkeeper.solvers.base import TLSALPN01, AccountKey, Challenge, Identifier
from certkeeper.spec import ip_of
from certkeeper.web import parse_bind

log = logging.getLogger(__name__)

ALPN = "acme-tls/1"
HANDSHAKE_TIMEOUT_S = 10.0


def _context(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([ALPN])
    # ssl loads certificates from files only: a private directory, removed at once.
    with tempfile.TemporaryDirectory(prefix="certkeeper-alpn-") as directory:
        cert_path, key_path = os.path.join(directory, "cert.pem"), os.path.join(directory, "key.pem")
        with open(cert_path, "wb") as handle:
            handle.write(cert_pem)
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(key_pem)
        context.load_cert_chain(cert_path, key_path)
    return context


class TlsAlpn01Solver:
    challenge_type = TLSALPN01

    def __init__(self, bind: str = "0.0.0.0:443") -> None:
        self.bind = bind
        self._lock = threading.Lock()
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._socket: socket.socket | None = None

    def describe(self) -> str:
        return f"tls-alpn-01 (listening on {self.bind})"

    @property
    def port(self) -> int | None:
        return self._socket.getsockname()[1] if self._socket is not None else None

    # -- the listener ----------------------------------------------------------------------------

    def _listen(self) -> None:
        with self._lock:
            if self._socket is not None:
                return
            host, port = parse_bind(self.bind)
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind((host, port))
                sock.listen(64)
            except OSError as error:
                sock.close()
                fix = {
                    errno.EACCES: "run as root, grant CAP_NET_BIND_SERVICE, or choose another port with --tls-bind",
                    errno.EADDRINUSE: "another program listens there (a web server?): stop it, or use HTTP-01",
                }.get(error.errno or 0, "check --tls-bind")
                raise ConfigError(f"cannot listen on {host}:{port} for TLS-ALPN-01 ({error.strerror})", fix) from None
            self._socket = sock
        threading.Thread(target=self._accept, args=(sock,), name="tls-alpn-01", daemon=True).start()

    def _accept(self, sock: socket.socket) -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._handshake, args=(conn,), daemon=True).start()

    def _select(self, tls: ssl.SSLObject | ssl.SSLSocket, server_name: str | None, _: ssl.SSLContext) -> int | None:
        key = (server_name or "").lower().rstrip(".")
        if not key and isinstance(tls, ssl.SSLSocket):
            # RFC 8738 §6 asks for the reverse name as SNI; a CA that sends none reached the address itself.
            local = ipaddress.ip_address(tls.getsockname()[0].split("%")[0])
            mapped = getattr(local, "ipv4_mapped", None)
            key = str(mapped or local)
        context = self._contexts.get(key)
        if context is None:
            return ssl.ALERT_DESCRIPTION_UNRECOGNIZED_NAME
        tls.context = context
        return None

    def _handshake(self, conn: socket.socket) -> None:
        base = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        base.set_alpn_protocols([ALPN])
        base.sni_callback = self._select
        conn.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            with base.wrap_socket(conn, server_side=True) as tls:
                if tls.selected_alpn_protocol() != ALPN:
                    log.debug("a TLS-ALPN-01 connection without acme-tls/1 was closed")
        except (OSError, ssl.SSLError) as error:
            log.debug("TLS-ALPN-01 handshake ended: %s", error)
        finally:
            conn.close()

    def close(self) -> None:
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    # -- the Solver protocol ---------------------------------------------------------------------

    def prepare(self, identifiers: Sequence[Identifier]) -> None:
        self._listen()

    def present(self, identifier: Identifier, challenge: Challenge, account: AccountKey) -> None:
        self._listen()
        cert_pem, key_pem = tls_alpn_certificate(identifier.name, account.key_authorization(challenge.token))
        context = _context(cert_pem, key_pem)
        with self._lock:
            for key in _keys(identifier.name):
                self._contexts[key] = context

    def cleanup(self, identifier: Identifier, challenge: Challenge, account: AccountKey) -> None:
        with self._lock:
            for key in _keys(identifier.name):
                self._contexts.pop(key, None)


def _keys(name: str) -> tuple[str, ...]:
    """What the CA may send as SNI for ``name``: itself, and for an IP address its reverse name too."""
    address = ip_of(name)
    return (name, ipaddress.ip_address(address).reverse_pointer) if address else (name,)
