"""The certificate nginx serves: numbered generations behind one ``current`` symlink.

nginx loads ``<root>/cert.pem`` and ``<root>/key.pem`` per handshake, where ``<root>`` is
``$realpath_root`` of ``current`` resolved once per handshake (see render.py). A swap therefore never
hands one handshake the old certificate with the new key; old generations stay on disk a few rotations
so a handshake that resolved them just before a swap can still open both files.
"""

from __future__ import annotations

import os
import pwd
import shutil
from pathlib import Path

from certkeeper.proxy.certs import CertPair

KEEP_GENERATIONS = 3


class LiveCerts:
    def __init__(self, live_dir: Path, worker_user: str | None) -> None:
        self.dir = live_dir
        self._owner = None
        if worker_user is not None:
            entry = pwd.getpwnam(worker_user)
            self._owner = (entry.pw_uid, entry.pw_gid)
        self.serving: CertPair | None = None

    @property
    def current(self) -> Path:
        return self.dir / "current"

    def reset(self) -> None:
        """Start empty: a certificate left from a previous run is re-read from the secrets, not trusted."""
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(mode=0o755, parents=True)
        self.dir.chmod(0o755)

    def install(self, pair: CertPair) -> Path:
        gen = self.dir / f"gen-{self._next_number():06d}"
        gen.mkdir(mode=0o700)
        self._write(gen / "cert.pem", pair.chain_pem, 0o644)
        self._write(gen / "key.pem", pair.key_pem, 0o600)
        if self._owner is not None:
            os.chown(gen, *self._owner)
        link = self.dir / ".current.new"
        link.unlink(missing_ok=True)
        link.symlink_to(gen.name)
        os.replace(link, self.current)
        self.serving = pair
        self._prune()
        return gen

    def _write(self, path: Path, data: bytes, mode: int) -> None:
        # Created with its final mode: the key is never readable by others, not even for an instant.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            os.write(fd, data)
            if self._owner is not None:
                os.fchown(fd, *self._owner)
        finally:
            os.close(fd)

    def _generations(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("gen-*") if p.is_dir())

    def _next_number(self) -> int:
        gens = self._generations()
        return int(gens[-1].name.removeprefix("gen-")) + 1 if gens else 1

    def _prune(self) -> None:
        for old in self._generations()[:-KEEP_GENERATIONS]:
            shutil.rmtree(old, ignore_errors=True)
