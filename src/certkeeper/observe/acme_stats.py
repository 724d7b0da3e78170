"""The ACME client's requests, counted for /metrics: one process-wide table, written by every worker
thread's Network (certkeeper.acme.network) and read at scrape time.

Endpoints are named from the directory's URLs where they are there (newNonce, newAccount, newOrder,
renewalInfo; the directory itself), else from the path (authz, challenge, finalize, cert, order):
CAs name these paths differently, but every known one (Let's Encrypt, Pebble, step-ca, ZeroSSL)
says which it is.
"""

from __future__ import annotations

import bisect
import threading
from urllib.parse import urlsplit

# Request duration buckets (seconds): a CA answers in tens of milliseconds, a slow one in seconds.
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
PATH_WORDS = (("renewal", "renewalInfo"), ("finalize", "finalize"), ("authz", "authz"), ("chall", "challenge"),
              ("cert", "cert"), ("order", "order"), ("nonce", "newNonce"), ("acct", "account"))  # fmt: skip


class AcmeStats:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._named: dict[str, str] = {}  # URL -> endpoint, from directories seen
        # (host, endpoint, method, status) -> [bucket counts..., count, sum]
        self.requests: dict[tuple[str, str, str, str], list[float]] = {}
        self.bad_nonce: dict[str, int] = {}  # host -> retries after a badNonce
        self.retry_after: dict[str, int] = {}  # host -> responses carrying Retry-After

    def directory(self, url: str, endpoints: dict[str, object]) -> None:
        with self._lock:
            self._named[url] = "directory"
            for name, value in endpoints.items():
                if isinstance(value, str) and value.startswith(("https://", "http://")):
                    self._named[value] = name

    def endpoint(self, url: str) -> str:
        named = self._named.get(url)
        if named is not None:
            return named
        path = urlsplit(url).path.lower()
        return next((name for word, name in PATH_WORDS if word in path), "other")

    def request(self, url: str, method: str, status: int | str, seconds: float, retry_after: bool) -> None:
        host = urlsplit(url).hostname or ""
        key = (host, self.endpoint(url), method, str(status))
        with self._lock:
            row = self.requests.get(key)
            if row is None:
                row = self.requests[key] = [0.0] * (len(BUCKETS) + 3)  # buckets, above the last, count, sum
            row[bisect.bisect_left(BUCKETS, seconds)] += 1
            row[-2] += 1
            row[-1] += seconds
            if retry_after:
                self.retry_after[host] = self.retry_after.get(host, 0) + 1

    def nonce_retry(self, url: str) -> None:
        host = urlsplit(url).hostname or ""
        with self._lock:
            self.bad_nonce[host] = self.bad_nonce.get(host, 0) + 1

    def snapshot(
        self,
    ) -> tuple[dict[tuple[str, str, str, str], list[float]], dict[str, int], dict[str, int]]:
        with self._lock:
            return ({k: list(v) for k, v in self.requests.items()}, dict(self.bad_nonce), dict(self.retry_after))


STATS = AcmeStats()
