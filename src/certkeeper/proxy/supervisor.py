"""The proxy's main loop: start nginx, poll the secrets, swap certificates, pass signals on."""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import subprocess
import time
import traceback
from pathlib import Path
from types import FrameType

from certkeeper.errors import ConfigError
from certkeeper.proxy import certs
from certkeeper.proxy.challenges import ChallengeWatch
from certkeeper.proxy.live import LiveCerts
from certkeeper.proxy.nginx import Nginx
from certkeeper.proxy.ports import holders
from certkeeper.proxy.render import RunPaths, render
from certkeeper.proxy.settings import ProxySettings

log = logging.getLogger("certkeeper.proxy")

# How often HTTPS is tried again while nginx rejects its configuration (each try runs `nginx -t`).
HTTPS_RETRY_SECONDS = 30.0
RECHECK_REFUSED_SECONDS = 30.0
# How long the TLS-ALPN-01 front stays after the last challenge ended: the next order of a batch
# (``issue --file``, a controller's queue) then needs no reload.
FRONT_LINGER_SECONDS = 5.0
# How often a front change that nginx did not take is tried again.
FRONT_RETRY_SECONDS = 5.0

FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


# Signals whose default action would end certkeeper and leave nginx running on its own: they end
# the proxy, nginx first.
EXITING_SIGNALS = (
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGPWR,
    signal.SIGIO,
    signal.SIGXCPU,
    signal.SIGXFSZ,
)


class _Exit(BaseException):
    """A requested exit with its status; a BaseException so the catch-alls around a tick let it through."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


class Supervisor:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.paths = RunPaths(settings.run_dir)
        self.nginx = Nginx(settings.nginx_bin, self.paths)
        self.live = LiveCerts(self.paths.live, settings.worker_user)
        self._seen: str | None = None  # digest of the pair last installed (or found identical to it)
        self._pending: str | None = None  # a problem seen once: a half-written pair shows one for a poll
        self._reported: str | None = None  # the problem last logged; not repeated until the state changes
        self._gone_logged = False
        self._https_on = False
        self._https_failure: str | None = None
        self._https_retry_at = 0.0
        # The TLS-ALPN-01 front (see docs/proxy.md): in the configuration nginx runs only while certkeeper's
        # responder has a challenge in flight; at rest the HTTPS server listens on the port itself.
        self.watch: ChallengeWatch | None = None
        if settings.enable_ssl and settings.tls_alpn_service is not None:
            self.watch = ChallengeWatch(settings.tls_alpn_service)
        self._front_on = False
        self._front_failure: str | None = None
        self._front_retry_at = 0.0
        self._tick_failure: str | None = None
        self._refused: str | None = None  # digest of a pair refused and reported; rechecked at _recheck_at
        self._recheck_at = 0.0
        self._lock_fd: int | None = None  # held (flock) for the life of the process
        # For /metrics (proxy/metrics.py): pairs installed, when the served one was, pairs refused.
        self.generation = 0
        self.rotated_at: float | None = None
        self.refusals = 0

    # -- start ---------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Everything before nginx starts.

        Only what leaves nginx unable to run at all (RUN_DIR unusable, a configuration nginx rejects
        even without HTTPS) is a ConfigError; a bad certificate or a full disk under ``live`` leaves
        HTTPS off and plain HTTP (ACME challenges, the 503) up.
        """
        try:
            self.paths.root.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.paths.temp.mkdir(exist_ok=True)
        except OSError as e:
            raise ConfigError(
                f"cannot use RUN_DIR={self.paths.root}: {e.strerror}", "set RUN_DIR to a writable directory"
            ) from None
        self._lock_run_dir()
        self._take_back_ports()
        # A socket file a killed nginx left would stop the next one binding it.
        for socket_file in (self.paths.https_socket, self.paths.alpn_socket):
            with contextlib.suppress(OSError):
                socket_file.unlink(missing_ok=True)
        # A live dir that cannot be emptied or made (full, read-only) is reported once there is a pair
        # to write into it: the install fails, which is the one refusal line a user needs.
        with contextlib.suppress(OSError):
            self.live.reset()
        if self.settings.enable_ssl:
            self.poll()
            if self.live.serving is None:
                log.info(
                    "no usable certificate in %s yet: serving ACME challenges and 503 until one appears",
                    self.settings.secrets_dir,
                )
        self._https_on = False
        if self.watch is not None:
            self.watch.ask_once()  # a challenge already in flight gets its route from the start
        self._front_on = self._want_front()
        if self.live.serving is not None:
            try:
                self.write_config(https=True, front=self._front_on)
                self._https_on = True
                return
            except ConfigError as e:
                https_failure = str(e)
            self.write_config(https=False, front=self._front_on)
            self._https_failure = https_failure
            self._https_retry_at = time.monotonic() + HTTPS_RETRY_SECONDS
            log.error("HTTPS is off: %s; serving ACME challenges and 503 on HTTP meanwhile", https_failure)
            return
        self.write_config(https=False, front=self._front_on)

    def _lock_run_dir(self) -> None:
        """One proxy per RUN_DIR: a second would wipe the first one's certificates and stop its nginx.

        The lock lives as long as this process (nginx does not inherit the descriptor), so a killed
        proxy's successor gets it, and then stops the nginx left behind.
        """
        try:
            fd = os.open(self.paths.lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise ConfigError(
                f"cannot use RUN_DIR={self.paths.root}: {e.strerror}", "set RUN_DIR to a writable directory"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise ConfigError(
                f"another certkeeper proxy is running with RUN_DIR={self.paths.root}",
                "give each proxy its own RUN_DIR",
            ) from None
        self._lock_fd = fd

    def _take_back_ports(self) -> None:
        """An nginx left running on this RUN_DIR (its supervisor was killed) would hold our ports."""
        pid = self.nginx.leftover_master()
        if pid is None:
            return
        ports = f"port {self.settings.http_port}"
        if self.settings.enable_ssl:
            ports = f"ports {self.settings.http_port} and {self.settings.https_port}"
        if self.nginx.stop_leftover(pid):
            log.warning("stopped nginx (pid %d), left running by an earlier certkeeper proxy on RUN_DIR=%s, "
                        "to take back %s", pid, self.paths.root, ports)  # fmt: skip
        else:
            log.error("nginx (pid %d), left running by an earlier certkeeper proxy on RUN_DIR=%s, holds %s "
                      "and did not stop: kill it", pid, self.paths.root, ports)  # fmt: skip

    def write_config(self, *, https: bool, front: bool = False) -> None:
        """Render, have ``nginx -t`` accept it, then put it in place; any failure is a ConfigError."""
        dhparam = https and self._copy_dhparam()
        text = render(self.settings, self.paths, has_cert=https, dhparam=dhparam, front=front)
        candidate = self.paths.conf.with_name("nginx.conf.new")
        try:
            candidate.write_text(text)
            self.nginx.check(candidate)
            os.replace(candidate, self.paths.conf)
        except OSError as e:
            raise ConfigError(
                f"cannot write {self.paths.conf}: {e.strerror}", "free some space in RUN_DIR or make it writable"
            ) from None
        finally:
            with contextlib.suppress(OSError):
                candidate.unlink(missing_ok=True)

    def _copy_dhparam(self) -> bool:
        # Read at start and when HTTPS is first turned on, not per rotation: the seed made a new one on
        # every save, and a reload per rotation is exactly what this proxy avoids.
        source = certs.source_dir(self.settings.secrets_dir) / "dhparam"
        try:
            if not source.is_file():
                return False
            data = source.read_bytes()
            if len(data) > certs.MAX_FILE_BYTES or not certs.dh_parameters_ok(data):
                log.warning("ignoring %s: it holds no PEM DH parameters", source)
                return False
            tmp = self.paths.dhparam.with_name("dhparam.pem.new")
            tmp.write_bytes(data)
            os.replace(tmp, self.paths.dhparam)
        except OSError as e:
            log.warning("ignoring %s: cannot copy it to %s: %s", source, self.paths.dhparam, e.strerror)
            return False
        return True

    # -- certificate polling -------------------------------------------------------------------------
    def poll(self) -> None:
        """Look at the secrets once; install a new valid pair; refuse (and log once) anything else."""
        try:
            self._poll()
        except Exception as e:  # a bug must not stop the rotations: say where, keep serving
            self._problem(f"could not look at the certificate: {describe(e)}", settled=True)

    def _poll(self) -> None:
        try:
            found = certs.find_pair(self.settings.secrets_dir)
        except OSError as e:  # e.g. a directory on the way that this user may not enter
            self._problem(f"cannot look into it: {e.strerror}")
            return
        if found is None:
            if self.live.serving is not None and not self._gone_logged:
                log.warning(
                    "certificate files gone from %s; still serving %s",
                    self.settings.secrets_dir,
                    self.live.serving.describe(),
                )
                self._gone_logged = True
            return
        self._gone_logged = False
        seen: str | None = None
        try:
            raw = certs.read_pair(found)
            seen = certs.digest(raw)
            if seen == self._seen:  # back to the served pair: a later refusal is news again
                self._pending = self._reported = self._refused = None
                return
            if seen == self._refused and time.monotonic() < self._recheck_at:
                return
            pair = certs.check_pair(raw, (found[0].name, found[1].name))
            if self.live.serving is not None and pair == self.live.serving:
                self._seen, self._pending, self._reported = seen, None, None
                return
            self.live.install(pair)
        except certs.PairRefused as why:
            # A plain (non-atomic) write shows a half-written pair for one poll: complain only if it stays.
            self._problem(str(why), seen=seen)
            if seen is not None and self._reported == f"{seen}:{why}":
                # Checked twice, refused twice: look again only now and then (a 1 MiB chain takes ~50 ms;
                # a certificate not valid yet becomes valid).
                self._refused, self._recheck_at = seen, time.monotonic() + RECHECK_REFUSED_SECONDS
            return
        except OSError as e:
            self._problem(f"cannot write it to {self.paths.live}: {e.strerror}", seen=seen, settled=True)
            return
        self._seen, self._pending, self._reported = seen, None, None
        self._https_retry_at = 0.0
        self.generation, self.rotated_at = self.generation + 1, time.time()
        log.info("serving certificate %s", pair.describe())

    def _problem(self, why: str, *, seen: str | None = None, settled: bool = False) -> None:
        """Log a refusal once per distinct state; ``settled`` ones need not be seen twice first."""
        state = f"{seen}:{why}"
        if state == self._reported:
            return
        if not settled and state != self._pending:
            self._pending = state
            return
        self._pending = self._reported = state
        self.refusals += 1
        keeping = self.live.serving.describe() if self.live.serving else "nothing (no certificate yet)"
        log.error("refused the certificate in %s: %s; still serving %s", self.settings.secrets_dir, why, keeping)

    # -- run -----------------------------------------------------------------------------------------
    def run(self) -> int:
        process = self.nginx.start()
        if self.watch is not None:
            self.watch.start()
        previous = {sig: signal.signal(sig, self._forward) for sig in FORWARDED_SIGNALS}
        previous |= {sig: signal.signal(sig, self._exit) for sig in EXITING_SIGNALS}
        try:
            return self._loop(process)
        except _Exit as e:
            return e.code
        finally:
            for sig in EXITING_SIGNALS:  # a second one must not cut the stop short
                signal.signal(sig, signal.SIG_IGN)
            if self.watch is not None:
                self.watch.stop()
            self.nginx.stop()  # a no-op after nginx exited; otherwise it must not outlive us
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        process = self.nginx.process
        if process is not None and process.poll() is None:
            with contextlib.suppress(ProcessLookupError):  # it may exit between the two lines
                os.kill(process.pid, signum)

    def _exit(self, signum: int, frame: FrameType | None) -> None:
        log.warning("got %s: stopping nginx and exiting", signal.Signals(signum).name)
        raise _Exit(128 + signum)

    def _loop(self, process: subprocess.Popen[bytes]) -> int:
        while True:
            try:
                code = process.wait(timeout=self.settings.poll_seconds)
            except subprocess.TimeoutExpired:
                if self.settings.enable_ssl:
                    self._safe_tick()
                continue
            if code != 0:
                self._name_port_holders()
            return code if code >= 0 else 128 - code

    def _name_port_holders(self) -> None:
        """nginx says "Address already in use"; say who uses it, since our nginx is gone by now."""
        ports = [("HTTP_PORT", self.settings.http_port)]
        if self.settings.enable_ssl and (self._https_on or self._front_on):
            ports.append(("HTTPS_PORT", self.settings.https_port))
        for name, port in ports:
            try:
                found = holders(port)
            except Exception:  # only an explanation: never let it hide nginx's exit status
                continue
            for pid, cmdline in found:
                log.error("%s %d is held by pid %d (%s): stop that process or set %s to a free port",
                          name, port, pid, cmdline[:120], name)  # fmt: skip

    def _safe_tick(self) -> None:
        try:
            self._tick()
        except Exception as e:  # never leave nginx unsupervised: log once, keep watching
            failure = describe(e)
            if failure != self._tick_failure:
                log.error("error while watching the certificate (still watching): %s", failure)
                self._tick_failure = failure
        else:
            self._tick_failure = None

    def _tick(self) -> None:
        self.poll()
        now = time.monotonic()
        # The first reload in a proxy's life: the HTTPS server block appears with the first certificate.
        https = self._https_on or (self.live.serving is not None and now >= self._https_retry_at)
        front = self._want_front()
        if https == self._https_on and (front == self._front_on or now < self._front_retry_at):
            return
        was_https, was_front = self._https_on, self._front_on
        failure = self._apply(https=https, front=front)
        if failure is None:
            if https and not was_https:
                log.info("HTTPS is on (port %d)", self.settings.https_port)
            if front != was_front:
                self._report_front(front)
            self._front_failure = None
            return
        if https != was_https:
            self._https_retry_at = now + HTTPS_RETRY_SECONDS
            if failure != self._https_failure:
                log.error("cannot turn HTTPS on: %s", failure)
                self._https_failure = failure
            return
        self._front_retry_at = now + FRONT_RETRY_SECONDS
        if failure != self._front_failure:
            change = "put the TLS-ALPN-01 route in front of" if front else "take the TLS-ALPN-01 route off"
            log.error("cannot %s port %d: %s; nginx serves the previous configuration, trying again every %g s",
                      change, self.settings.https_port, failure, FRONT_RETRY_SECONDS)  # fmt: skip
            self._front_failure = failure

    def _want_front(self) -> bool:
        if self.watch is None:
            return False
        if self.watch.names:
            return True
        return self._front_on and self.watch.quiet_for() < FRONT_LINGER_SECONDS

    def _apply(self, *, https: bool, front: bool) -> str | None:
        """Write, check and reload into this configuration; why not, or None once nginx runs it."""
        try:
            self.write_config(https=https, front=front)
        except ConfigError as e:
            return str(e)
        if front and not self._front_on:
            # Not in use while the front is off (nginx removes it when a reload drops the front); one left
            # by a killed nginx would stop the new configuration binding it. (https.sock stays: see render.)
            with contextlib.suppress(OSError):
                self.paths.alpn_socket.unlink(missing_ok=True)
        if not self.nginx.reload_and_wait():
            # nginx.conf again describes what nginx runs, so a SIGHUP (forwarded to it) reloads that.
            with contextlib.suppress(ConfigError):
                self.write_config(https=self._https_on, front=self._front_on)
            return "nginx did not take the new configuration (its log above says why)"
        self._https_on, self._front_on = https, front
        return None

    def _report_front(self, front: bool) -> None:
        assert self.watch is not None
        if front:
            names = ", ".join(self.watch.names) or "a challenge"
            log.info("TLS-ALPN-01 for %s: acme-tls/1 on port %d now goes to %s", names, self.settings.https_port,
                     self.settings.tls_alpn_service)  # fmt: skip
        else:
            log.info("no TLS-ALPN-01 challenge in flight: the HTTPS server has port %d to itself again",
                     self.settings.https_port)  # fmt: skip


def describe(error: BaseException) -> str:
    """An unexpected error in one line: its type, its errno text, where it was raised; never its data."""
    where = ""
    frames = traceback.extract_tb(error.__traceback__)
    if frames:
        where = f" at {Path(frames[-1].filename).name}:{frames[-1].lineno}"
    detail = f": {error.strerror}" if isinstance(error, OSError) and error.strerror else ""
    return f"{type(error).__name__}{detail}{where}"
