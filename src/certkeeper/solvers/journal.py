"""What a process has put into DNS and not yet taken out, so a later run can take it out.

Each process writes its own journal file and holds an exclusive lock on a companion lock file
for as long as it lives. The kernel drops the lock when the process dies, even by SIGKILL, so
a journal whose lock can be taken belongs to a dead process: its records are leftovers.
"""

from __future__ import annotations

import fcntl
import json
import os
import secrets
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

Record = dict[str, Any]


class Journal:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._path: Path | None = None
        self._lock_fd: int | None = None

    def _open(self) -> Path:
        if self._path is None:
            # The store directory may not exist yet: make it private as the store itself would.
            self.directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            self.directory.mkdir(exist_ok=True, mode=0o700)
            stem = f"{os.getpid()}-{secrets.token_hex(4)}"
            fd = os.open(self.directory / f"{stem}.lock", os.O_RDWR | os.O_CREAT, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._lock_fd = fd
            self._path = self.directory / f"{stem}.json"
        return self._path

    def _write(self) -> None:
        path = self._open()
        temporary = path.with_suffix(".tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(self._records, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)

    def add(self, record: Record) -> None:
        """Write ``record`` down before it is published, so a crash in between still leaves a note."""
        with self._lock:
            self._records.append(record)
            self._write()

    def remove(self, record: Record) -> None:
        with self._lock:
            if record in self._records:
                self._records.remove(record)
                if self._records:
                    self._write()
                else:
                    self._close()

    def _close(self) -> None:
        # Nothing left out there: drop this process's files rather than leave one per run behind.
        if self._path is not None:
            self._path.unlink(missing_ok=True)
            self._path.with_suffix(".lock").unlink(missing_ok=True)
            self._path = None
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def recover(self, clean: Callable[[Record], bool]) -> int:
        """Clean every leftover record ``clean`` claims (returns True when it took it out); count them."""
        cleaned = 0
        for path, records in self._iter_orphans():
            kept = [r for r in records if not clean(r)]
            cleaned += len(records) - len(kept)
            if kept:
                path.write_text(json.dumps(kept), encoding="utf-8")
            else:
                path.unlink(missing_ok=True)
                path.with_suffix(".lock").unlink(missing_ok=True)
        return cleaned

    def _iter_orphans(self) -> Iterator[tuple[Path, list[Record]]]:
        # A generator over the locked journals; each stays locked until the caller moves on.
        if not self.directory.is_dir():
            return
        for path in sorted(self.directory.glob("*.json")):
            if path == self._path:
                continue
            try:
                fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o600)
            except OSError:
                continue
            try:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # its process is alive and owns these records
                try:
                    records = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    records = []
                yield path, records if isinstance(records, list) else []
            finally:
                os.close(fd)

    def pending(self) -> list[Record]:
        with self._lock:
            return list(self._records)
