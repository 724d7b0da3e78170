"""Real headless Chromium (Debian package ``chromium``), driven over the DevTools protocol.

``--dump-dom`` reads the DOM with JavaScript, so it cannot show a page with scripts off; the
protocol can: Emulation.setScriptExecutionDisabled, then the DOM read by DOM.getOuterHTML.
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--remote-debugging-port=0"]  # fmt: skip


@dataclass(frozen=True)
class Loaded:
    html: str  # the document after load, as Chromium holds it
    seconds: float  # from navigation to the load event
    title: str


class Browser:
    def __init__(self) -> None:
        self._profile = tempfile.TemporaryDirectory(prefix="chromium-", ignore_cleanup_errors=True)
        self._process = subprocess.Popen(
            ["chromium", *FLAGS, f"--user-data-dir={self._profile.name}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        active = Path(self._profile.name) / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (active.exists() and active.read_text().strip()):
            if self._process.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise RuntimeError("chromium did not open its DevTools port")
            time.sleep(0.05)
        self.port = int(active.read_text().split()[0])

    def close(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        self._profile.cleanup()

    def __enter__(self) -> Browser:
        return self

    def __exit__(self, *_: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def load(self, url: str, *, javascript: bool = True, timeout: float = 60) -> Loaded:
        return asyncio.run(asyncio.wait_for(self._load(url, javascript, None), timeout))

    def screenshot(self, url: str, path: Path, *, width: int = 1280, height: int = 640) -> None:
        asyncio.run(asyncio.wait_for(self._load(url, True, (path, width, height)), 60))

    async def _load(self, url: str, javascript: bool, shot: tuple[Path, int, int] | None) -> Loaded:
        async with aiohttp.ClientSession() as http:
            async with http.put(f"http://127.0.0.1:{self.port}/json/new?about:blank") as answer:
                target = await answer.json()
            try:
                async with http.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    return await _drive(ws, url, javascript, shot)
            finally:
                async with http.get(f"http://127.0.0.1:{self.port}/json/close/{target['id']}"):
                    pass


async def _drive(
    ws: aiohttp.ClientWebSocketResponse, url: str, javascript: bool, shot: tuple[Path, int, int] | None
) -> Loaded:
    ids = itertools.count(1)
    events: list[str] = []

    async def call(method: str, **params: Any) -> dict[str, Any]:
        number = next(ids)
        await ws.send_str(json.dumps({"id": number, "method": method, "params": params}))
        async for message in ws:
            data = json.loads(message.data)
            if data.get("id") == number:
                if "error" in data:
                    raise RuntimeError(f"{method}: {data['error']}")
                result: dict[str, Any] = data["result"]
                return result
            if "method" in data:
                events.append(data["method"])
        raise RuntimeError("chromium closed the DevTools connection")

    async def until(event: str) -> None:
        while event not in events:
            message = await ws.receive()
            data = json.loads(message.data)
            if "method" in data:
                events.append(data["method"])

    await call("Page.enable")
    await call("Emulation.setScriptExecutionDisabled", value=not javascript)
    if shot is not None:
        await call("Emulation.setDeviceMetricsOverride", width=shot[1], height=shot[2], deviceScaleFactor=1,
                   mobile=False)  # fmt: skip
    started = time.perf_counter()
    await call("Page.navigate", url=url)
    await until("Page.loadEventFired")
    seconds = time.perf_counter() - started
    if shot is not None:
        image = await call("Page.captureScreenshot", format="png")
        shot[0].write_bytes(base64.b64decode(image["data"]))
    root = await call("DOM.getDocument", depth=-1)
    html = (await call("DOM.getOuterHTML", nodeId=root["root"]["nodeId"]))["outerHTML"]
    title = (await call("Page.getNavigationHistory"))["entries"][-1]["title"]
    return Loaded(html, seconds, title)
