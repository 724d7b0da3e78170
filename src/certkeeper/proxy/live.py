"""The certificate nginx serves: numbered generations behind one ``current`` symlink.

nginx loads ``<root>/cert.pem`` and ``<root>/key.pem`` per handshake, where ``<root>`` is
``$realpath_root`` of ``current`` resolved once per handshake (see render.py). A swap therefore never
hands one handshake the old certificate with the new key; old generations stay on disk a few rotations
so a handshake that resolved them just before a swap can still open both files.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
from pathlib import Path

from certkeeper.proxy.certs import CertPair, openssl_loads

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
        # exist_ok: ``live`` may be a mount point, which rmtree empties but cannot remove.
        self.dir.mkdir(mode=0o755, parents=True, exist_ok=True)
        self.dir.chmod(0o755)

    def install(self, pair: CertPair) -> Path:
        """Write a new generation, have OpenSSL load it, then swap ``current`` to it.

        Raises OSError (a full or read-only disk) or PairRefused (OpenSSL rejects the files); either way
        the half-made generation is removed and ``current`` still names the pair served before.
        """
        gen = self.dir / f"gen-{self._next_number():06d}"
        link = self.dir / ".current.new"
        try:
            gen.mkdir(mode=0o700)
            self._write(gen / "cert.pem", pair.chain_pem, 0o644)
            self._write(gen / "key.pem", pair.key_pem, 0o600)
            openssl_loads(gen / "cert.pem", gen / "key.pem")
            if self._owner is not None:  # after the check: the key is the workers', not root's, from here on
                for path in (gen / "cert.pem", gen / "key.pem", gen):
                    os.chown(path, *self._owner)
            link.unlink(missing_ok=True)
            link.symlink_to(gen.name)
            os.replace(link, self.current)
        except BaseException:
            shutil.rmtree(gen, ignore_errors=True)
            with contextlib.suppress(OSError):
                link.unlink(missing_ok=True)
            raise
        self.serving = pair
        self._prune()
        return gen

    def _write(self, path: Path, data: bytes, mode: int) -> None:
        # Created with its final mode: the key is never readable by others, not even for an instant.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:  # a nearly full disk can take part of a write without an error
                view = view[os.write(fd, view) :]
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
