"""The embedded default store: one directory per certificate, replaced atomically.

Layout (``live/`` names are stable symlinks, like certbot's)::

    <store>/<first name>/versions/<n>/{cert,chain,fullchain,privkey}.pem meta.json
    <store>/<first name>/current -> versions/<n>
    <store>/<first name>/{cert,chain,fullchain,privkey}.pem -> current/...
    <store>/<first name>/state.json          renewal state (next check, failures, last error)
    <store>/accounts/<id>/{key.pem,account.json}

A new issuance is written to a fresh version directory, then ``current`` is swapped with one
``rename``: a reader that resolves ``current`` once sees a key and a certificate from the same
issuance. The previous version is kept for roll-back.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from certkeeper.acme.account import Account, account_id
from certkeeper.errors import ConfigError
from certkeeper.model import IssuedCert
from certkeeper.stores.base import StoredCert

FILES = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem", "meta.json")
KEEP_VERSIONS = 2


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _symlink_atomic(target: str, link: Path) -> None:
    tmp = link.with_name(f".{link.name}.tmp")
    tmp.unlink(missing_ok=True)
    os.symlink(target, tmp)
    os.replace(tmp, link)


class FileStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def _ensure_root(self) -> None:
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        except OSError as error:
            raise ConfigError(f"cannot create the store {self.root} ({error.strerror})", "choose --store") from None

    def lineage_dir(self, lineage: str) -> Path:
        return self.root / lineage

    def location(self, lineage: str) -> str:
        return str(self.lineage_dir(lineage))

    def lineages(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if (p / "current").exists() or (p / "state.json").exists())

    # -- certificates ----------------------------------------------------------------------------

    def load(self, lineage: str) -> StoredCert | None:
        current = self.lineage_dir(lineage) / "current"
        if not current.exists():
            return None
        version = current.resolve()  # resolve once: every file from the same issuance
        try:
            meta = json.loads((version / "meta.json").read_text())
            return StoredCert.parse(
                (version / "privkey.pem").read_bytes(),
                (version / "cert.pem").read_bytes(),
                (version / "chain.pem").read_bytes(),
                meta,
            )
        except (OSError, ValueError) as error:
            return StoredCert(b"", b"", b"", None, {}, f"unreadable: {error}")

    def save(self, lineage: str, issued: IssuedCert, meta: dict[str, Any]) -> bool:
        """Store a new issuance; returns False (and writes nothing) if it is already current."""
        self._ensure_root()
        base = self.lineage_dir(lineage)
        versions = base / "versions"
        versions.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(base, 0o755)
        current = self.load(lineage)
        if current is not None and current.info is not None and current.info.fingerprint == issued.info.fingerprint:
            return False
        numbers = [int(p.name) for p in versions.iterdir() if p.name.isdigit()]
        number = max(numbers, default=0) + 1
        staging = Path(tempfile.mkdtemp(dir=versions, prefix=".new-"))
        try:
            os.chmod(staging, 0o755)
            contents = {
                "cert.pem": (issued.cert_pem, 0o644),
                "chain.pem": (issued.chain_pem, 0o644),
                "fullchain.pem": (issued.fullchain_pem, 0o644),
                "privkey.pem": (issued.key_pem, 0o600),
                "meta.json": (json.dumps(meta, indent=2, sort_keys=True).encode() + b"\n", 0o644),
            }
            for name, (data, mode) in contents.items():
                write_atomic(staging / name, data, mode)
            final = versions / str(number)
            os.rename(staging, final)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _symlink_atomic(f"versions/{number}", base / "current")
        for name in FILES:
            link = base / name
            if not link.is_symlink():
                _symlink_atomic(f"current/{name}", link)
        for old in sorted(numbers)[: max(0, len(numbers) + 1 - KEEP_VERSIONS)]:
            shutil.rmtree(versions / str(old), ignore_errors=True)
        return True

    # -- renewal state ---------------------------------------------------------------------------

    def load_state(self, lineage: str) -> dict[str, Any]:
        try:
            state: dict[str, Any] = json.loads((self.lineage_dir(lineage) / "state.json").read_text())
            return state
        except (OSError, ValueError):
            return {}

    def save_state(self, lineage: str, state: dict[str, Any]) -> None:
        self._ensure_root()
        base = self.lineage_dir(lineage)
        base.mkdir(parents=True, exist_ok=True)
        write_atomic(base / "state.json", json.dumps(state, indent=2, sort_keys=True).encode())

    # -- ACME account ----------------------------------------------------------------------------

    def _account_dir(self, directory_url: str) -> Path:
        return self.root / "accounts" / account_id(directory_url)

    def load_account(self, directory_url: str) -> Account | None:
        folder = self._account_dir(directory_url)
        try:
            data = json.loads((folder / "account.json").read_text())
            return Account(directory_url=directory_url, url=data["url"], key_pem=(folder / "key.pem").read_bytes())
        except (OSError, ValueError, KeyError):
            return None

    def save_account(self, account: Account) -> None:
        self._ensure_root()
        folder = self._account_dir(account.directory_url)
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(folder / "key.pem", account.key_pem, 0o600)
        payload = {"url": account.url, "directory_url": account.directory_url}
        write_atomic(folder / "account.json", json.dumps(payload, indent=2).encode())
