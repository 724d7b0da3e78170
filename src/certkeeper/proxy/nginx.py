"""Running the nginx binary: check a configuration, start the master in the foreground, reload it."""

from __future__ import annotations

import os
import re
import signal
import subprocess

from certkeeper.errors import ConfigError
from certkeeper.proxy.render import RunPaths


class Nginx:
    def __init__(self, binary: str, paths: RunPaths) -> None:
        self.binary = binary
        self.paths = paths
        self.process: subprocess.Popen[bytes] | None = None

    def _args(self) -> list[str]:
        # -e: nginx would otherwise open its compiled-in log path before reading our configuration.
        return [self.binary, "-p", str(self.paths.root), "-c", str(self.paths.conf), "-e", "stderr"]

    def check(self) -> None:
        """``nginx -t``; raise ConfigError carrying nginx's own first complaint."""
        result = subprocess.run([*self._args(), "-t", "-q"], capture_output=True, text=True, timeout=60, check=False)
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
