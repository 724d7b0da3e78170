"""The proxy's main loop: start nginx, poll the secrets, swap certificates, pass signals on."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
from types import FrameType

from certkeeper.errors import ConfigError
from certkeeper.proxy import certs
from certkeeper.proxy.live import LiveCerts
from certkeeper.proxy.nginx import Nginx
from certkeeper.proxy.render import RunPaths, render
from certkeeper.proxy.settings import ProxySettings

log = logging.getLogger("certkeeper.proxy")

FORWARDED_SIGNALS = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
)


class Supervisor:
    def __init__(self, settings: ProxySettings) -> None:
        self.settings = settings
        self.paths = RunPaths(settings.run_dir)
        self.nginx = Nginx(settings.nginx_bin, self.paths)
        self.live = LiveCerts(self.paths.live, settings.worker_user)
        self._seen: str | None = None
        self._refused: str | None = None
        self._gone_logged = False
        self._https_on = False
        self._https_failed_logged = False

    # -- start ---------------------------------------------------------------------------------------
    def prepare(self) -> None:
        """Everything before nginx starts; any problem is a ConfigError (one line, non-zero exit)."""
        try:
            self.paths.root.mkdir(mode=0o755, parents=True, exist_ok=True)
            self.paths.temp.mkdir(exist_ok=True)
            self.live.reset()
        except OSError as e:
            raise ConfigError(
                f"cannot use RUN_DIR={self.paths.root}: {e.strerror}", "set RUN_DIR to a writable directory"
            ) from None
        if self.settings.enable_ssl:
            self.poll()
            if self.live.serving is None:
                log.info(
                    "no usable certificate in %s yet: serving ACME challenges and 503 until one appears",
                    self.settings.secrets_dir,
                )
        self.write_config()
        self._https_on = self.live.serving is not None

    def write_config(self) -> None:
        dhparam = self._copy_dhparam()
        text = render(self.settings, self.paths, has_cert=self.live.serving is not None, dhparam=dhparam)
        tmp = self.paths.conf.with_suffix(".new")
        tmp.write_text(text)
        os.replace(tmp, self.paths.conf)
        self.nginx.check()

    def _copy_dhparam(self) -> bool:
        # Read at start and when HTTPS is first turned on, not per rotation: the seed made a new one on
        # every save, and a reload per rotation is exactly what this proxy avoids.
        source = certs.source_dir(self.settings.secrets_dir) / "dhparam"
        if not source.is_file():
            return False
        if b"BEGIN DH PARAMETERS" not in source.read_bytes()[:4096]:
            log.warning("ignoring %s: it holds no PEM DH parameters", source)
            return False
        shutil.copyfile(source, self.paths.dhparam)
        return True

    # -- certificate polling -------------------------------------------------------------------------
    def poll(self) -> None:
        """Look at the secrets once; install a new valid pair; refuse (and log once) a bad one."""
        found = certs.find_pair(self.settings.secrets_dir)
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
        try:
            raw = certs.read_pair(found)
        except (OSError, certs.PairRefused):
            return  # mid-swap or mid-write: the next poll sees a settled state
        seen = certs.digest(raw)
        if seen == self._seen:
            return
        try:
            pair = certs.check_pair(raw, (found[0].name, found[1].name))
        except certs.PairRefused as why:
            # A plain (non-atomic) write shows a half-written pair for one poll: complain only if it stays.
            if self._refused == seen:
                self._seen = seen
                keeping = self.live.serving.describe() if self.live.serving else "nothing (no certificate yet)"
                log.error(
                    "refused the certificate in %s: %s; still serving %s", self.settings.secrets_dir, why, keeping
                )
            self._refused = seen
            return
        self._seen = seen
        self._refused = None
        if self.live.serving is not None and pair.chain_pem == self.live.serving.chain_pem:
            return
        self.live.install(pair)
        log.info("serving certificate %s", pair.describe())

    # -- run -----------------------------------------------------------------------------------------
    def run(self) -> int:
        process = self.nginx.start()
        previous = {sig: signal.signal(sig, self._forward) for sig in FORWARDED_SIGNALS}
        try:
            return self._loop(process)
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def _forward(self, signum: int, frame: FrameType | None) -> None:
        process = self.nginx.process
        if process is not None and process.poll() is None:
            os.kill(process.pid, signum)

    def _loop(self, process: subprocess.Popen[bytes]) -> int:
        while True:
            try:
                code = process.wait(timeout=self.settings.poll_seconds)
            except subprocess.TimeoutExpired:
                if self.settings.enable_ssl:
                    self._tick()
                continue
            return code if code >= 0 else 128 - code

    def _tick(self) -> None:
        self.poll()
        if self._https_on or self.live.serving is None:
            return
        # The one reload in a proxy's life: the HTTPS server block appears with the first certificate.
        try:
            self.write_config()
        except ConfigError as e:
            if not self._https_failed_logged:
                log.error("cannot turn HTTPS on: %s", e)
                self._https_failed_logged = True
            return
        self.nginx.reload()
        self._https_on = True
        log.info("HTTPS is on (port %d)", self.settings.https_port)
