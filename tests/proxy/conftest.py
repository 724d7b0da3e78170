"""Fixtures for the proxy tests: real nginx (through ``certkeeper proxy``), real aiohttp backends, a local CA."""

from __future__ import annotations

import asyncio
import http.client
import shutil
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from aiohttp import WSMsgType, web
from proxy_helpers import HOST, LocalCA, RunningProxy, StartProxy, free_port, run_certkeeper_proxy, wait_for


async def _echo(request: web.Request) -> web.StreamResponse:
    if request.headers.get("Upgrade", "").lower() == "websocket":
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        async for message in ws:
            if message.type == WSMsgType.TEXT:
                await ws.send_str(f"echo: {message.data}")
        return ws
    return web.json_response({"path": request.path_qs, "headers": dict(request.headers)})


async def _challenge(request: web.Request) -> web.Response:
    return web.Response(text=f"challenge answer for {request.match_info['token']}")


class Servers:
    """aiohttp apps on a private event loop in a thread, for the life of the test session."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.runners: list[web.AppRunner] = []

    def serve(self, app: web.Application) -> int:
        return asyncio.run_coroutine_threadsafe(self._serve(app), self.loop).result(timeout=10)

    async def _serve(self, app: web.Application) -> int:
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.runners.append(runner)
        return int(runner.addresses[0][1])

    def close(self) -> None:
        for runner in self.runners:
            asyncio.run_coroutine_threadsafe(runner.cleanup(), self.loop).result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    s = Servers()
    yield s
    s.close()


@pytest.fixture(scope="session")
def backend_port(servers: Servers) -> int:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    return servers.serve(app)


@pytest.fixture(scope="session")
def cert_service_port(servers: Servers) -> int:
    app = web.Application()
    app.router.add_get("/.well-known/acme-challenge/{token}", _challenge)
    return servers.serve(app)


@pytest.fixture(scope="session")
def ca() -> LocalCA:
    return LocalCA()


@pytest.fixture
def world_dir() -> Iterator[Path]:
    """A tmp dir nginx's unprivileged workers can traverse (pytest's own tmp dirs are 0700 to root)."""
    path = Path(tempfile.mkdtemp(prefix="ckproxy-"))
    path.chmod(0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def secrets_dir(world_dir: Path) -> Path:
    path = world_dir / "secrets"
    path.mkdir(mode=0o755)
    return path


@pytest.fixture
def start_proxy(world_dir: Path, secrets_dir: Path, backend_port: int) -> Iterator[StartProxy]:
    """Start ``certkeeper proxy`` on free loopback ports; wait until its HTTP port answers."""
    started: list[RunningProxy] = []

    def start(*, no_dac_override: bool = False, **env: str) -> RunningProxy:
        """``env`` overrides the defaults (RUN_DIR and the ports included)."""
        base = {
            "TARGET_SERVICE": f"127.0.0.1:{backend_port}",
            "SECRETS_DIR": str(secrets_dir),
            "RUN_DIR": str(world_dir / f"run{len(started)}"),
            "HTTP_PORT": str(free_port()),
            "HTTPS_PORT": str(free_port()),
            "LISTEN_ADDRESS": "127.0.0.1",
            "ACCESS_LOG": "off",
            "CERT_POLL_SECONDS": "0.2",
        }
        full = {**base, **env}
        http_port, https_port, run_dir = int(full["HTTP_PORT"]), int(full["HTTPS_PORT"]), Path(full["RUN_DIR"])
        log_path = world_dir / f"proxy{len(started)}.log"
        process = run_certkeeper_proxy(full, log_path, no_dac_override=no_dac_override)
        proxy = RunningProxy(process, http_port, https_port, run_dir, log_path)
        started.append(proxy)

        def listening() -> bool:
            if process.poll() is not None:
                raise AssertionError(f"certkeeper proxy exited {process.returncode}:\n{proxy.log()}")
            # An HTTP answer, not just a TCP connect: `nginx -t`, run before nginx starts, binds and
            # listens on the ports for a moment, so a connect alone can succeed before nginx is up.
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=1)
            try:
                conn.request("GET", "/.well-known/acme-challenge/ready-probe", headers={"Host": HOST})
                return conn.getresponse().status > 0
            except http.client.HTTPException:
                return False
            finally:
                conn.close()

        wait_for(listening, 15, "certkeeper proxy listening on its HTTP port")
        return proxy

    yield start
    for proxy in started:
        proxy.stop()
