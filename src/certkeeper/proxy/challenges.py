"""Whether a TLS-ALPN-01 challenge is in flight: certkeeper's responder (TLS_ALPN_SERVICE) says so.

A thread long-polls ``GET /certkeeper/tls-alpn-01?since=N`` on the responder's own port (it tells a
TLS ClientHello from a GET by the first byte), so the proxy needs no setting beyond TLS_ALPN_SERVICE
and works wherever that address reaches certkeeper: the same host, or a Service in front of its pod.
A responder that does not answer means no challenge: between ``certkeeper issue`` runs there is none
listening, and the CA could not reach an absent one anyway. That is said once, not at every retry.
"""

from __future__ import annotations

import http.client
import json
import logging
import threading
import time

from certkeeper.proxy.settings import Upstream

log = logging.getLogger("certkeeper.proxy")

STATUS_PATH = "/certkeeper/tls-alpn-01"
LONG_POLL_SECONDS = 20.0
RETRY_SECONDS = 1.0


class ChallengeWatch:
    def __init__(self, service: Upstream) -> None:
        self.service = service
        self._lock = threading.Lock()
        self._names: tuple[str, ...] = ()
        self._changed_at = time.monotonic()  # when ``names`` last went empty or non-empty
        self.wake = threading.Event()  # set on every change, for a supervisor that waits on it
        self._unreachable: str | None = None  # the failure last reported; None while it answers
        self._stopped = threading.Event()

    @property
    def names(self) -> tuple[str, ...]:
        with self._lock:
            return self._names

    def quiet_for(self) -> float:
        """Seconds since the last challenge ended (0 while one is in flight)."""
        with self._lock:
            return 0.0 if self._names else time.monotonic() - self._changed_at

    def start(self) -> None:
        threading.Thread(target=self._run, name="tls-alpn-01 watch", daemon=True).start()

    def stop(self) -> None:
        self._stopped.set()

    def ask_once(self, timeout: float = 1.0) -> None:
        """One short look, before the first configuration is written; a failure is only remembered."""
        self._ask(None, timeout)

    def _run(self) -> None:
        generation: int | None = None
        while not self._stopped.is_set():
            try:
                generation = self._ask(generation, LONG_POLL_SECONDS + 10.0)
            except Exception:  # never let the watch die: it would leave the front on, or off, for good
                log.exception("error while asking certkeeper's TLS-ALPN-01 responder (still watching)")
                generation = None
                self._stopped.wait(RETRY_SECONDS)

    def _ask(self, since: int | None, timeout: float) -> int | None:
        path = STATUS_PATH if since is None else f"{STATUS_PATH}?since={since}&wait={LONG_POLL_SECONDS:g}"
        conn = http.client.HTTPConnection(self.service.host, self.service.port, timeout=timeout)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            body = response.read(1 << 20)
            if response.status != 200:
                raise OSError(f"it answered HTTP {response.status} (is TLS_ALPN_SERVICE certkeeper's responder?)")
            status = json.loads(body)
            names = tuple(str(n) for n in status["names"])
            generation = int(status["generation"])
        except (OSError, http.client.HTTPException, ValueError, KeyError, TypeError) as error:
            self._set((), _why(error))
            self._stopped.wait(RETRY_SECONDS)
            return None
        finally:
            conn.close()
        self._set(names, None)
        return generation

    def _set(self, names: tuple[str, ...], failure: str | None) -> None:
        if failure is not None and self._unreachable is None:
            log.warning(
                "certkeeper's TLS-ALPN-01 responder at %s does not answer (%s): HTTPS is served directly; "
                "acme-tls/1 goes to it once it answers with a challenge",
                self.service,
                failure,
            )
        elif failure is None and self._unreachable is not None:
            log.info("certkeeper's TLS-ALPN-01 responder at %s answers", self.service)
        self._unreachable = failure
        with self._lock:
            if bool(names) != bool(self._names):
                self._changed_at = time.monotonic()
            changed = names != self._names
            self._names = names
        if changed:
            self.wake.set()


def _why(error: BaseException) -> str:
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    if isinstance(error, OSError) and str(error):
        return str(error)
    if isinstance(error, ValueError | KeyError | TypeError):
        return "its answer is not certkeeper's (is TLS_ALPN_SERVICE certkeeper's responder?)"
    return type(error).__name__
