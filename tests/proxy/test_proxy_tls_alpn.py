"""TLS-ALPN-01 through ``certkeeper proxy``: with TLS_ALPN_SERVICE, while certkeeper presents a challenge, nginx's
ssl_preread on the HTTPS port sends ALPN ``acme-tls/1`` to certkeeper's responder and everything else to the
HTTPS server. The real Pebble
validates through the real nginx with the HTTP-01 port closed; then normal HTTPS traffic on the same port
reaches the backend with the client's address."""

from __future__ import annotations

import json
import ssl
from pathlib import Path

from proxy_helpers import HOST, StartProxy, free_port, https_get, wait_for, write_plain

from testbench.pebble import Pebble
from tests.test_issue_cli import Env, Run


def test_a_certificate_over_tls_alpn01_through_the_proxy_with_port_80_closed(
    pebble: Pebble,
    env: Env,
    store: Path,
    certkeeper: Run,
    http_port_taken: None,
    start_proxy: StartProxy,
    secrets_dir: Path,
) -> None:
    # Nothing listens on Pebble's TLS port yet, so a free port may be that very one: pick others.
    responder_port, http_port = _other_ports(pebble.tls_port)
    responder = f"127.0.0.1:{responder_port}"
    proxy = start_proxy(
        ENABLE_SSL="true", HTTP_PORT=str(http_port), HTTPS_PORT=str(pebble.tls_port), TLS_ALPN_SERVICE=responder
    )
    # At rest (no challenge in flight) nginx runs no stream front at all.
    assert "ssl_preread on;" not in (proxy.run_dir / "nginx.conf").read_text()

    # certkeeper answers the CA only once the port shows its validation certificate (the proxy having
    # put the front in place); Pebble connects to its tlsPort, so that is where to check.
    check = f"127.0.0.1:{pebble.tls_port}"
    result = certkeeper(env, "issue", "--tls-alpn-bind", responder, "--tls-alpn-check", check, "-v", HOST)
    assert result.returncode == 0, result.stderr + proxy.log()
    assert f"{check} shows the TLS-ALPN-01 certificate for {HOST}" in result.stderr
    assert f"TLS-ALPN-01 for {HOST}: acme-tls/1 on port {pebble.tls_port}" in proxy.log()

    # The certificate it got, installed in the proxy: served on the same port, to the backend.
    lineage = store / HOST
    write_plain(secrets_dir, (lineage / "fullchain.pem").read_bytes(), (lineage / "privkey.pem").read_bytes())
    context = ssl.create_default_context(cadata=pebble.root_pem().decode())
    wait_for(lambda: _serves(pebble.tls_port, context), 15, "HTTPS through the ALPN front with the new certificate")
    reply = https_get(pebble.tls_port, context, "/via-front", alpn=["http/1.1"])
    assert reply.status == 200
    seen = json.loads(reply.body)
    assert seen["path"] == "/via-front"
    assert seen["headers"]["X-Real-IP"] == "127.0.0.1", "the client's address was lost behind the stream hop"
    assert proxy.process.poll() is None
    # The challenge over, the front goes again.
    wait_for(lambda: "the HTTPS server has port" in proxy.log(), 30, "the front taken off")
    assert "ssl_preread on;" not in (proxy.run_dir / "nginx.conf").read_text()
    assert https_get(pebble.tls_port, context, "/direct", alpn=["http/1.1"]).status == 200


def _other_ports(taken: int) -> tuple[int, int]:
    ports: set[int] = set()
    while len(ports) < 2:
        port = free_port()
        if port != taken:
            ports.add(port)
    first, second = sorted(ports)
    return first, second


def _serves(port: int, context: ssl.SSLContext) -> bool:
    try:
        return https_get(port, context, "/", alpn=["http/1.1"]).status == 200
    except (OSError, ssl.SSLError):
        return False
