"""The embedded default store: one directory per certificate, replaced atomically.

Layout (the top-level names are stable symlinks, like certbot's ``live/``)::

    <store>/<first name>/versions/<n>/{cert,chain,fullchain,privkey}.pem meta.json
    <store>/<first name>/current -> versions/<n>
    <store>/<first name>/{cert,chain,fullchain,privkey}.pem meta.json -> current/...
    <store>/<first name>/state.json          renewal state (next check, failures, hook pending)
    <store>/<first name>/pending.json        an issued certificate not yet stored (0600; rare)
    <store>/<first name>/.lock               held (flock) by the run working on this certificate
    <store>/accounts/<id>/{key.pem,account.json}   created as one directory, renamed into place
    <store>/accounts/.lock                   held while an account is looked up or created

A new issuance is written to a fresh version directory, then ``current`` is swapped with one
``rename``: a reader that resolves ``current`` once sees a key and a certificate from the same
issuance. The version that was current before is kept for roll-back.

Nothing inside the store is reached through a symbolic link that certkeeper did not make: every
directory is checked with ``lstat`` and files are opened with ``O_NOFOLLOW``, so a planted link
can neither redirect a write (a key landing elsewhere) nor a deletion (pruning outside the store).
What certkeeper reads is only ``current`` and the consumer links, whose targets it checks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Any

from certkeeper.acme.account import Account, account_id, key_thumbprint
from certkeeper.errors import ConfigError
from certkeeper.model import IssuedCert
from certkeeper.stores.base import StoredCert

FILES = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem", "meta.json")
PENDING = "pending.json"
RESERVE = ".reserve"  # room set aside before ordering, so an issued certificate can always be kept
RESERVE_BYTES = 64 * 1024  # a 4096-bit RSA key and a long chain are under 16 KiB
ROOM_BYTES = 1024 * 1024  # free space wanted before ordering: a version is about 20 KiB
MAX_FILE_BYTES = 1024 * 1024
LINEAGE_MODE = 0o755  # consumers (a web server's user) traverse it to the links
VERSIONS_MODE = 0o700
VERSION_MODE = 0o755
PRIVATE_MODE = 0o700
_VERSION_TARGET = re.compile(r"^versions/([0-9]+)$")


class StoreError(ConfigError):
    """The store cannot be used as it is (a planted link, not writable, full): nothing reached the CA."""


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write a file whole or not at all; it is created with ``mode``, never wider for a moment."""
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


def read_file(path: Path) -> bytes:
    """A regular file's bytes, refusing a symbolic link in its last component."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        return handle.read(MAX_FILE_BYTES)


def _refuse(path: Path, what: str) -> StoreError:
    return StoreError(
        f"refusing to use {path}: {what}",
        "certkeeper never follows links inside its store; remove it (move the real directory there if it is yours)",
    )


def real_dir(path: Path, mode: int | None = None) -> bool:
    """Whether ``path`` is a real directory (created with exactly ``mode`` when given); a link is refused."""
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        if mode is None:
            return False
        try:
            os.mkdir(path, mode)
        except FileExistsError:
            return real_dir(path, None)
        os.chmod(path, mode)  # mkdir's mode is cut by the umask; the mode must not depend on it
        return True
    if stat.S_ISLNK(info.st_mode):
        raise _refuse(path, "it is a symbolic link")
    if not stat.S_ISDIR(info.st_mode):
        raise _refuse(path, "it is not a directory")
    if mode is not None and stat.S_IMODE(info.st_mode) != mode:
        os.chmod(path, mode)
    return True


class Busy(Exception):
    """Another process holds the lock."""


class FileLock:
    """An exclusive ``flock`` on a lock file, held until ``release``; the kernel drops it if we die.

    With ``wait=False`` a lock another process holds raises ``Busy`` at once.
    """

    def __init__(self, path: Path, wait: bool = True) -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        except OSError as error:
            if error.errno == errno.ELOOP:
                raise _refuse(path, "it is a symbolic link") from None
            if error.errno not in (errno.EROFS, errno.EACCES) or not path.is_file():
                raise _os_error("write to the store at", path.parent, error) from None
            # A read-only store can still be locked (and read); writing it fails later, before any order.
            self.fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self.fd)
            raise Busy(str(path)) from None
        except BaseException:
            os.close(self.fd)
            raise

    def release(self) -> None:
        if self.fd >= 0:
            fcntl.flock(self.fd, fcntl.LOCK_UN)
            os.close(self.fd)
            self.fd = -1


def _os_error(what: str, path: Path, error: OSError) -> StoreError:
    fix = {
        errno.ENOSPC: "free some space",
        errno.EDQUOT: "free some space",
        errno.EROFS: "mount it read-write or choose another --store",
        errno.EACCES: "fix its permissions or choose another --store",
        errno.EPERM: "fix its permissions or choose another --store",
    }.get(error.errno or 0, "check the store")
    return StoreError(f"cannot {what} {path} ({error.strerror or error})", fix)


class FileStore:
    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    # -- paths -----------------------------------------------------------------------------------

    def _ensure_root(self) -> None:
        # The root itself may be a link the administrator made (e.g. onto a bigger disk); below it, none.
        if self.root.is_dir():
            return
        try:
            self.root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_MODE)
            os.chmod(self.root, PRIVATE_MODE)
        except OSError as error:
            raise ConfigError(f"cannot create the store {self.root} ({error.strerror})", "choose --store") from None

    def lineage_dir(self, lineage: str) -> Path:
        return self.root / lineage

    def location(self, lineage: str) -> str:
        return str(self.lineage_dir(lineage))

    def _lineage(self, lineage: str, create: bool = False) -> Path | None:
        base = self.lineage_dir(lineage)
        if create:
            self._ensure_root()
        return base if real_dir(base, LINEAGE_MODE if create else None) else None

    def lineages(self) -> list[str]:
        if not self.root.is_dir():
            return []
        found = []
        for entry in self.root.iterdir():
            if entry.name == "accounts" or entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
                continue
            if any(os.path.lexists(entry / name) for name in ("current", "state.json", PENDING)):
                found.append(entry.name)
        return sorted(found)

    def _current_version(self, base: Path) -> Path | None:
        """The version ``current`` names, checked: a link to ``versions/<n>``, a real directory."""
        try:
            target = os.readlink(base / "current")
        except FileNotFoundError:
            return None
        except OSError as error:
            if error.errno == errno.EINVAL:
                raise _refuse(base / "current", "it is not a symbolic link") from None
            raise
        if not _VERSION_TARGET.match(target):
            raise _refuse(base / "current", f"it points to {target!r}, not into versions/")
        if not real_dir(base / "versions"):
            return None
        version = base / target
        return version if real_dir(version) else None

    # -- certificates ----------------------------------------------------------------------------

    def load(self, lineage: str) -> StoredCert | None:
        try:
            base = self._lineage(lineage)
            version = self._current_version(base) if base else None
            if version is None:
                return None
            key, cert, chain = (read_file(version / n) for n in ("privkey.pem", "cert.pem", "chain.pem"))
        except (OSError, StoreError) as error:
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
            return StoredCert(b"", b"", b"", None, {}, f"unreadable: {reason}")
        meta: Any = {}
        meta_problem = None
        try:
            meta = json.loads(read_file(version / "meta.json"))
        except (OSError, ValueError) as error:
            meta_problem = f"meta.json is unreadable ({getattr(error, 'strerror', None) or error})"
        if not isinstance(meta, dict):
            meta_problem, meta = f"meta.json holds {type(meta).__name__}, not an object", {}
        stored = StoredCert.parse(key, cert, chain, meta)
        return dataclasses.replace(stored, meta_problem=meta_problem) if meta_problem else stored

    def _version_numbers(self, versions: Path) -> list[int]:
        return sorted(int(p.name) for p in versions.iterdir() if p.name.isdigit() and not p.is_symlink() and p.is_dir())

    def save(self, lineage: str, issued: IssuedCert, meta: dict[str, Any]) -> bool:
        """Store a new issuance; returns False (and writes nothing) if it is already current."""
        base = self._lineage(lineage, create=True)
        assert base is not None
        versions = base / "versions"
        real_dir(versions, VERSIONS_MODE)
        current = self.load(lineage)
        if current is not None and current.info is not None and current.info.fingerprint == issued.info.fingerprint:
            self.repair_links(lineage)
            return False
        previous = self._current_version(base)
        numbers = self._version_numbers(versions)
        number = max(numbers, default=0) + 1
        staging = Path(tempfile.mkdtemp(dir=versions, prefix=".new-"))
        try:
            os.chmod(staging, VERSION_MODE)
            contents = {
                "cert.pem": (issued.cert_pem, 0o644),
                "chain.pem": (issued.chain_pem, 0o644),
                "fullchain.pem": (issued.fullchain_pem, 0o644),
                "privkey.pem": (issued.key_pem, 0o600),
                "meta.json": (json.dumps(meta, indent=2, sort_keys=True).encode() + b"\n", 0o644),
            }
            for name, (data, mode) in contents.items():
                write_atomic(staging / name, data, mode)
            _fsync_dir(staging)
            os.rename(staging, versions / str(number))
            _fsync_dir(versions)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        _symlink_atomic(f"versions/{number}", base / "current")
        _fsync_dir(base)
        self.repair_links(lineage)
        # Keep the new version and the one that was current before it; a version that never became
        # current (a run killed before its swap) is not worth keeping over the last good one.
        keep = {str(number), previous.name if previous else ""}
        for old in numbers:
            if str(old) not in keep:
                shutil.rmtree(versions / str(old), ignore_errors=True)  # rmtree never follows links
        return True

    def rewrite_meta(self, lineage: str, meta: dict[str, Any]) -> None:
        """Replace a damaged meta.json of the current version (the certificate itself is untouched)."""
        base = self._lineage(lineage)
        version = self._current_version(base) if base else None
        if version is not None:
            write_atomic(version / "meta.json", json.dumps(meta, indent=2, sort_keys=True).encode() + b"\n")

    def repair_links(self, lineage: str) -> list[str]:
        """Make each consumer link point at ``current/<name>`` again; returns the names it fixed."""
        base = self._lineage(lineage)
        if base is None or self._current_version(base) is None:
            return []
        fixed = []
        for name in FILES:
            link = base / name
            try:
                if os.readlink(link) == f"current/{name}":
                    continue
            except FileNotFoundError:
                pass
            except OSError as error:
                if error.errno != errno.EINVAL:
                    raise
                if link.is_dir() and not link.is_symlink():
                    raise _refuse(link, "it is a directory where a link to current/ belongs") from None
            _symlink_atomic(f"current/{name}", link)
            fixed.append(name)
        return fixed

    # -- crash recovery --------------------------------------------------------------------------

    def lock(self, lineage: str) -> FileLock | None:
        """Exclusive use of one certificate's directory, or None while another run holds it.

        The caller waits (without holding a thread) and asks again: two runs of many certificates
        each, blocking their worker threads on each other's locks, could otherwise wait forever.
        """
        base = self._lineage(lineage, create=True)
        assert base is not None
        try:
            return FileLock(base / ".lock", wait=False)
        except Busy:
            return None

    def tidy(self, lineage: str) -> list[str]:
        """Remove what killed runs left (temporary files, unfinished versions) and restore the links."""
        base = self._lineage(lineage)
        if base is None:
            return []
        notes = []
        leftovers = [p for p in base.iterdir() if p.name.startswith(".") and p.name != ".lock"]
        if real_dir(base / "versions"):
            leftovers += [p for p in (base / "versions").iterdir() if p.name.startswith(".new-")]
        for path in leftovers:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            notes.append(f"removed {path.name} left by an interrupted run")
        fixed = self.repair_links(lineage)
        if fixed:
            notes.append(f"restored the link{'s' if len(fixed) > 1 else ''} {', '.join(fixed)}")
        return notes

    def check_writable(self, lineage: str) -> None:
        """Before ordering: prove the store takes a write and has room, and set room aside to keep the result."""
        try:
            base = self._lineage(lineage, create=True)
            assert base is not None
        except OSError as error:
            raise _os_error("write to the store at", self.lineage_dir(lineage), error) from None
        reserve = base / RESERVE
        try:
            fd = os.open(reserve, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                os.posix_fallocate(fd, 0, RESERVE_BYTES)
                os.fsync(fd)
            finally:
                os.close(fd)
            room = os.statvfs(base)
            if room.f_bavail * room.f_frsize < ROOM_BYTES:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as error:
            with contextlib.suppress(OSError):
                reserve.unlink()
            raise _os_error("write to the store at", base, error) from None

    def _pending_path(self, lineage: str) -> Path:
        return self.lineage_dir(lineage) / PENDING

    def save_pending(self, lineage: str, issued: IssuedCert) -> str:
        """Keep an issued certificate and its key (0600) until it is stored, in the room set aside for it."""
        base = self._lineage(lineage, create=True)
        assert base is not None
        data = json.dumps(
            {
                "key_pem": issued.key_pem.decode(),
                "cert_pem": issued.cert_pem.decode(),
                "chain_pem": issued.chain_pem.decode(),
            }
        ).encode()
        path = self._pending_path(lineage)
        reserve = base / RESERVE
        if os.path.lexists(reserve) and len(data) <= RESERVE_BYTES:
            # Overwriting blocks already allocated needs no new space, even on a full disk.
            # The JSON is padded with spaces to the reserved size: nothing is freed for others to take.
            fd = os.open(reserve, os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o600)
                os.pwrite(fd, data.ljust(RESERVE_BYTES), 0)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(reserve, path)
        else:
            write_atomic(path, data, 0o600)
        _fsync_dir(base)
        return str(path)

    def load_pending(self, lineage: str) -> IssuedCert | None:
        from certkeeper.crypto import cert_info

        try:
            raw = json.loads(read_file(self._pending_path(lineage)))
            cert_pem = raw["cert_pem"].encode()
            return IssuedCert(raw["key_pem"].encode(), cert_pem, raw["chain_pem"].encode(), cert_info(cert_pem))
        except FileNotFoundError:
            return None
        except Exception:  # a damaged pending file is dropped: it cannot be stored anyway
            self.drop_pending(lineage)
            return None

    def drop_pending(self, lineage: str) -> None:
        """Forget a kept certificate (it is stored, or unusable) and any room set aside for one."""
        for path in (self._pending_path(lineage), self.lineage_dir(lineage) / RESERVE):
            if os.path.lexists(path):
                path.unlink()
                _fsync_dir(path.parent)

    # -- renewal state ---------------------------------------------------------------------------

    def load_state(self, lineage: str) -> Any:
        """The raw content of state.json (``{}`` if absent); ``RenewalState.from_dict`` checks its shape."""
        try:
            return json.loads(read_file(self.lineage_dir(lineage) / "state.json"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as error:
            return f"unreadable ({getattr(error, 'strerror', None) or error})"

    def stage_state(self, lineage: str, state: dict[str, Any]) -> None:
        pass  # the state has its own file, written after the certificate's

    def save_state(self, lineage: str, state: dict[str, Any]) -> None:
        base = self._lineage(lineage, create=True)
        assert base is not None
        write_atomic(base / "state.json", json.dumps(state, indent=2, sort_keys=True).encode())

    # -- ACME account ----------------------------------------------------------------------------

    def _accounts(self, create: bool = False) -> Path | None:
        if create:
            self._ensure_root()
        folder = self.root / "accounts"
        return folder if real_dir(folder, PRIVATE_MODE if create else None) else None

    def account_lock(self, directory_url: str) -> FileLock:
        """Held while an account is looked up or registered: two first runs register one account."""
        folder = self._accounts(create=True)
        assert folder is not None
        lock = FileLock(folder / ".lock")
        self.tidy_accounts()
        return lock

    def account_directories(self) -> list[str]:
        """The CA directory URL of every account in the store (to renew a certificate whose meta.json is lost)."""
        folder = self._accounts()
        urls = []
        for entry in sorted(folder.iterdir()) if folder else []:
            try:
                data = json.loads(read_file(entry / "account.json"))
                urls.append(str(data["directory_url"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return urls

    def load_account(self, directory_url: str) -> Account | None:
        folder = self._accounts()
        if folder is None:
            return None
        home = folder / account_id(directory_url)
        if not real_dir(home):
            return None
        try:
            data = json.loads(read_file(home / "account.json"))
            key_pem = read_file(home / "key.pem")
            url = data["url"]
            if not isinstance(url, str) or not isinstance(data, dict):
                return None
        except (OSError, ValueError, KeyError, TypeError):
            return None
        thumbprint = data.get("key_thumbprint")
        return Account(directory_url=directory_url, url=url, key_pem=key_pem,
                       verified=thumbprint is not None and thumbprint == key_thumbprint(key_pem))  # fmt: skip

    def save_account(self, account: Account) -> None:
        """Key and URL land together: a new account directory is renamed into place whole."""
        folder = self._accounts(create=True)
        assert folder is not None
        home = folder / account_id(account.directory_url)
        payload = {
            "url": account.url,
            "directory_url": account.directory_url,
            "key_thumbprint": key_thumbprint(account.key_pem),
        }
        document = json.dumps(payload, indent=2).encode() + b"\n"
        if real_dir(home):
            try:
                existing = read_file(home / "key.pem")
            except OSError:  # missing, or not a regular file
                existing = b""
            if existing == account.key_pem:  # the same key, a corrected URL: one file replaces one file
                write_atomic(home / "account.json", document, 0o600)
                return
            shutil.rmtree(home)  # a broken unit (no key, or another key than its URL's): replaced whole
        staging = Path(tempfile.mkdtemp(dir=folder, prefix=".new-"))
        try:
            os.chmod(staging, PRIVATE_MODE)
            write_atomic(staging / "key.pem", account.key_pem, 0o600)
            write_atomic(staging / "account.json", document, 0o600)
            _fsync_dir(staging)
            os.rename(staging, home)
            _fsync_dir(folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise

    def tidy_accounts(self) -> None:
        """Remove account directories a killed registration left unfinished (call with the account lock held)."""
        folder = self._accounts()
        for entry in folder.iterdir() if folder else []:
            if entry.name.startswith(".new-") and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            elif not entry.name.startswith(".") and real_dir(entry):
                for temporary in entry.glob(".*"):  # a write_atomic temporary file of a killed run
                    temporary.unlink(missing_ok=True)
