"""List-then-watch caches of the objects the controller reads, holding only the fields it needs.

One ``Informer`` per resource: it lists (in pages), then watches from the list's resourceVersion with
bookmarks. A watch the server ends is resumed from the last version seen; a 410 Gone (the version is
too old) or any failure lists again, so a deletion during an outage is never missed, and reconnects
back off. Each raw object is reduced by a ``project`` function to a small frozen value as soon as
it is parsed, so a cache of thousands of objects costs little, and only a projection that changed
reaches ``on_change``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import httpx2

from certkeeper.kube.api import KubeApiError, api_error_text, check_response

log = logging.getLogger(__name__)
V = TypeVar("V")
PAGE_SIZE = 100


def watch_timeout_s() -> int:
    """How long the API server keeps one watch open before ending it cleanly (it is then resumed).

    CERTKEEPER_WATCH_TIMEOUT (seconds, 1-1800) shortens it: the tests use it to make the resume from a
    resourceVersion, and the 410 Gone an API server restarted meanwhile answers, happen within seconds.
    """
    raw = os.environ.get("CERTKEEPER_WATCH_TIMEOUT", "")
    return min(max(int(raw), 1), 1800) if raw.isdigit() else 300


WATCH_TIMEOUT_S = watch_timeout_s()
BACKOFF_S = (0.5, 1, 2, 4, 8, 15, 30)

# (key, old projection or None, new projection or None)
OnChange = Callable[[str, Any, Any], None]


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


class Informer(Generic[V]):
    def __init__(
        self,
        http: httpx2.AsyncClient,
        what: str,
        path: str,
        project: Callable[[dict[str, Any]], V],
        on_change: OnChange,
        *,
        labels: str | None = None,
        fields: str | None = None,
    ) -> None:
        self.http = http
        self.what = what  # for log lines: "Certificates", "Secrets labelled ..."
        self.path = path
        self.project = project
        self.on_change = on_change
        self.labels = labels
        self.fields = fields
        self.cache: dict[str, V] = {}
        self.synced = asyncio.Event()
        self.resource_version = ""
        self.requests = 0  # list pages and watch connections made: the API cost of this cache
        self.relists = 0

    def _params(self) -> dict[str, str]:
        params = {}
        if self.labels:
            params["labelSelector"] = self.labels
        if self.fields:
            params["fieldSelector"] = self.fields
        return params

    async def run(self) -> None:
        """Keep the cache current until cancelled."""
        failures = 0
        while True:
            try:
                await self._list()
                failures = 0
                while True:
                    await self._watch()
            except asyncio.CancelledError:
                raise
            except KubeApiError as error:
                if error.gone:
                    log.info("the watch on %s expired (410 Gone): listing again", self.what)
                    continue
                failures += 1
                delay = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
                log.warning("%s; listing %s again in %.1f s", error, self.what, delay)
                await asyncio.sleep(delay)
            except (httpx2.HTTPError, OSError, ValueError) as error:
                failures += 1
                delay = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
                log.warning("watching %s failed (%s); listing again in %.1f s", self.what, api_error_text(error), delay)
                await asyncio.sleep(delay)
            except Exception as error:  # a bug: the cache must outlive it
                failures += 1
                delay = BACKOFF_S[min(failures, len(BACKOFF_S)) - 1]
                log.exception("watching %s: unexpected %s; listing again in %.1f s", self.what, error, delay)
                await asyncio.sleep(delay)

    async def _list(self) -> None:
        self.relists += 1
        seen: dict[str, V] = {}
        params = {**self._params(), "limit": str(PAGE_SIZE)}
        while True:
            self.requests += 1
            response = await self.http.get(self.path, params=params)
            body = check_response(f"list {self.what}", response)
            for obj in body.get("items") or ():
                seen[object_key(obj)] = self.project(obj)
            meta = body.get("metadata") or {}
            if not meta.get("continue"):
                self.resource_version = str(meta.get("resourceVersion", ""))
                break
            params["continue"] = meta["continue"]
        old = self.cache
        self.cache = seen
        for key in old.keys() - seen.keys():
            self.on_change(key, old[key], None)
        for key, value in seen.items():
            if old.get(key) != value:
                self.on_change(key, old.get(key), value)
        self.synced.set()

    async def _watch(self) -> None:
        params = {
            **self._params(),
            "watch": "true",
            "allowWatchBookmarks": "true",
            "resourceVersion": self.resource_version,
            "timeoutSeconds": str(WATCH_TIMEOUT_S),
        }
        timeout = httpx2.Timeout(10.0, read=WATCH_TIMEOUT_S + 30.0)
        self.requests += 1
        async with self.http.stream("GET", self.path, params=params, timeout=timeout) as response:
            if not response.is_success:
                await response.aread()
                check_response(f"watch {self.what}", response)
            async for line in response.aiter_lines():
                if line.strip():
                    self._event(json.loads(line))

    def _event(self, event: dict[str, Any]) -> None:
        kind = event.get("type")
        obj = event.get("object") or {}
        if kind == "ERROR":
            code = obj.get("code")
            raise KubeApiError(f"cannot watch {self.what} ({code}: {obj.get('message', '')})", code=code)
        version = (obj.get("metadata") or {}).get("resourceVersion")
        if version:
            self.resource_version = str(version)
        if kind == "BOOKMARK":
            return
        key = object_key(obj)
        old = self.cache.get(key)
        if kind == "DELETED":
            if key in self.cache:
                del self.cache[key]
                self.on_change(key, old, None)
            return
        new = self.project(obj)
        if new != old:
            self.cache[key] = new
            self.on_change(key, old, new)
