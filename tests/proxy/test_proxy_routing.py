"""What a client of the proxy sees: HTTPS to the backend, redirects, challenge routing, auth, websockets."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
from pathlib import Path

import aiohttp
import pytest
from proxy_helpers import HOST, LocalCA, StartProxy, http_get, https_get, write_plain


def test_https_reaches_backend_with_the_original_proxy_headers(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA
) -> None:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    proxy = start_proxy(ENABLE_SSL="true")

    reply = https_get(proxy.https_port, ca.client_context(), "/cats?name=tom")

    assert reply.status == 200
    assert reply.serial == issued.serial
    seen = json.loads(reply.body)
    assert seen["path"] == "/cats?name=tom"
    headers = seen["headers"]
    assert headers["Host"] == HOST
    assert headers["X-Real-IP"] == "127.0.0.1"
    assert headers["X-Forwarded-For"] == "127.0.0.1"
    assert headers["X-Forwarded-Proto"] == "https"
    assert headers["X-Forwarded-Host"] == HOST
    assert reply.headers["strict-transport-security"].startswith("max-age=")


def test_https_offers_http2(start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA) -> None:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    proxy = start_proxy(ENABLE_SSL="true", HSTS="false")

    assert https_get(proxy.https_port, ca.client_context(), alpn=["h2", "http/1.1"]).alpn == "h2"
    assert "strict-transport-security" not in https_get(proxy.https_port, ca.client_context()).headers


def test_http_redirects_to_https_but_routes_challenges_to_the_cert_service(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA, cert_service_port: int
) -> None:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    proxy = start_proxy(ENABLE_SSL="true", CERT_SERVICE=f"127.0.0.1:{cert_service_port}")

    status, headers, _ = http_get(proxy.http_port, "/cats?name=tom")
    assert status == 301
    assert headers["location"] == f"https://{HOST}:{proxy.https_port}/cats?name=tom"

    status, _, body = http_get(proxy.http_port, "/.well-known/acme-challenge/tok123")
    assert (status, body) == (200, b"challenge answer for tok123")


def test_without_ssl_http_proxies_and_still_routes_challenges(
    start_proxy: StartProxy, cert_service_port: int, backend_port: int
) -> None:
    # The seed's *_ENV_NAME indirection, with a numeric literal as the port (which crashed the original).
    proxy = start_proxy(
        TARGET_SERVICE="",
        SERVICE_HOST_ENV_NAME="MYAPP_SERVICE_HOST",
        MYAPP_SERVICE_HOST="127.0.0.1",
        SERVICE_PORT_ENV_NAME=str(backend_port),
        CERT_SERVICE_HOST_ENV_NAME="CERTS_SERVICE_HOST",
        CERT_SERVICE_PORT_ENV_NAME="CERTS_SERVICE_PORT",
        CERTS_SERVICE_HOST="127.0.0.1",
        CERTS_SERVICE_PORT=str(cert_service_port),
    )

    status, _, body = http_get(proxy.http_port, "/.well-known/acme-challenge/abc")
    assert (status, body) == (200, b"challenge answer for abc")
    status, _, body = http_get(proxy.http_port, "/cats")
    assert status == 200
    assert json.loads(body)["headers"]["X-Forwarded-Proto"] == "http"
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", proxy.https_port), timeout=5)


def test_basic_auth_guards_the_backend_but_not_challenges(
    start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA, cert_service_port: int
) -> None:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    # {PLAIN} is nginx's plain-text htpasswd scheme: keeps the test free of a hashing tool.
    (secrets_dir / "htpasswd").write_text("cat:{PLAIN}meow\n")
    proxy = start_proxy(ENABLE_SSL="true", ENABLE_BASIC_AUTH="true", CERT_SERVICE=f"127.0.0.1:{cert_service_port}")
    context = ca.client_context()

    assert https_get(proxy.https_port, context).status == 401
    wrong = base64.b64encode(b"cat:woof").decode()
    assert https_get(proxy.https_port, context, headers={"Authorization": f"Basic {wrong}"}).status == 401
    right = base64.b64encode(b"cat:meow").decode()
    assert https_get(proxy.https_port, context, headers={"Authorization": f"Basic {right}"}).status == 200
    assert http_get(proxy.http_port, "/.well-known/acme-challenge/t")[0] == 200


async def _websocket_round_trip(port: int, ca: LocalCA) -> str:
    async with (
        aiohttp.ClientSession() as session,
        session.ws_connect(f"wss://127.0.0.1:{port}/ws", ssl=ca.client_context(), server_hostname=HOST) as ws,
    ):
        await ws.send_str("hello")
        message = await ws.receive(timeout=10)
        return str(message.data)


def test_websocket_upgrade_passes_through_when_asked(start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA) -> None:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    with_ws = start_proxy(ENABLE_SSL="true", WEB_SOCKETS="true")
    without_ws = start_proxy(ENABLE_SSL="true")

    assert asyncio.run(_websocket_round_trip(with_ws.https_port, ca)) == "echo: hello"
    try:
        asyncio.run(_websocket_round_trip(without_ws.https_port, ca))
    except aiohttp.WSServerHandshakeError:
        pass
    else:
        raise AssertionError("websocket upgrade passed through without WEB_SOCKETS=true")
