"""Running the nginx binary: check a configuration, start the master in the foreground, reload, stop it."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

from certkeeper.errors import ConfigError
from certkeeper.proxy.render import RunPaths

GRACEFUL_STOP_SECONDS = 10.0
FAST_STOP_SECONDS = 5.0
# nginx -t has passed by then, so a master that starts no new worker within this did not take it.
RELOAD_SECONDS = 5.0


class Nginx:
    def __init__(self, binary: str, paths: RunPaths) -> None:
        self.binary = binary
        self.paths = paths
        self.process: subprocess.Popen[bytes] | None = None

    def _args(self, conf: Path | None = None) -> list[str]:
        # -e: nginx would otherwise open its compiled-in log path before reading our configuration.
        return [self.binary, "-p", str(self.paths.root), "-c", str(conf or self.paths.conf), "-e", "stderr"]

    def check(self, conf: Path | None = None) -> None:
        """``nginx -t`` on ``conf`` (the live configuration by default); raise ConfigError with nginx's complaint."""
        result = subprocess.run(
            [*self._args(conf), "-t", "-q"], capture_output=True, text=True, timeout=60, check=False
        )
        if result.returncode != 0:
            raise ConfigError(
                f"nginx rejected the configuration: {_first_complaint(result.stderr)}", _hint(result.stderr)
            )

    def start(self) -> subprocess.Popen[bytes]:
        # stdout/stderr are inherited: the container's log is nginx's log.
        self.process = subprocess.Popen(self._args())
        return self.process

    def reload(self) -> None:
        """Graceful reload: new workers take the new configuration, old ones finish their requests."""
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGHUP)

    def accepting_workers(self) -> set[int]:
        """Pids of the master's workers that still accept connections (not "shutting down")."""
        if self.process is None:
            return set()
        found = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                parent = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[-1].split()[1])
                title = Path(f"/proc/{entry}/cmdline").read_bytes() if parent == self.process.pid else b""
            except (OSError, ValueError, IndexError):
                continue  # gone meanwhile
            # An old worker sets this title in the same step as it closes its listening sockets.
            if title.startswith(b"nginx: worker process") and b"shutting down" not in title:
                found.add(int(entry))
        return found

    def reload_and_wait(self, seconds: float = RELOAD_SECONDS) -> bool:
        """Reload; True once only workers of the new configuration accept, False if nginx kept the old one.

        A master that cannot apply a configuration (a socket it cannot bind, say) logs why and keeps its
        old workers: no new worker appears. The old workers keep accepting for a moment (nginx tells them
        to stop ~100 ms after starting the new ones), so this waits for that too.
        """
        before = self.accepting_workers()
        self.reload()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            now = self.accepting_workers()
            if now - before and not now & before:
                return True
            time.sleep(0.02)
        return False

    def stop(self) -> None:
        """Stop our nginx if it still runs (graceful first): it must never outlive its supervisor."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        for sig, seconds in ((signal.SIGQUIT, GRACEFUL_STOP_SECONDS), (signal.SIGTERM, FAST_STOP_SECONDS)):
            process.send_signal(sig)
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=seconds)
                return
        process.kill()
        process.wait()

    def leftover_master(self) -> int | None:
        """The pid of an nginx master still running on this RUN_DIR, left by a previous certkeeper proxy.

        Its pid file names it; /proc confirms it is an nginx master on our configuration, not a process
        that reused the number.
        """
        try:
            pid = int(self.paths.pid.read_text().strip())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except (OSError, ValueError):
            return None
        if not cmdline.startswith(b"nginx: master process") or str(self.paths.conf).encode() not in cmdline:
            return None
        return pid if _alive(pid) else None

    def stop_leftover(self, pid: int) -> bool:
        """Stop a leftover master (graceful first); True once it is gone."""
        for sig, seconds in ((signal.SIGQUIT, GRACEFUL_STOP_SECONDS), (signal.SIGTERM, FAST_STOP_SECONDS)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, sig)
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                if not _alive(pid):
                    return True
                time.sleep(0.05)
        return not _alive(pid)


def _alive(pid: int) -> bool:
    """Running, not a zombie; a zombie that is our child (we are a container's pid 1) is reaped."""
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[-1].split()[0] not in ("Z", "X")


def _first_complaint(output: str) -> str:
    for line in output.splitlines():
        if "[emerg]" in line or "[alert]" in line or "[crit]" in line:
            return re.sub(r"^\d+#\d+: ", "", line.split("] ", 1)[-1].strip())
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    return lines[0] if lines else "no message"


def _hint(output: str) -> str:
    if "host not found in upstream" in output:
        return "check that TARGET_SERVICE / CERT_SERVICE name a host this pod can resolve"
    if "Permission denied" in output:
        return "run as root or give RUN_DIR and SECRETS_DIR to the user running certkeeper"
    return "fix the setting named above"
