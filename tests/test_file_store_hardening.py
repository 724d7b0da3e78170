"""The file store when things are not as they should be: planted links, wrong modes, damaged files,
locks held by others, a kept certificate waiting to be stored, leftovers of killed runs.

tests/test_store_faults.py makes these faults for real under the ``certkeeper`` command; these pin,
in process and fast (so ``make mutate`` runs them per mutant), the exact line a user reads and what
each call leaves on disk.
"""

from __future__ import annotations

import datetime
import errno
import json
import os
import stat
import threading
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certkeeper.acme.account import Account, account_id, key_thumbprint
from certkeeper.crypto import cert_info
from certkeeper.model import IssuedCert
from certkeeper.stores import files as files_module
from certkeeper.stores.files import (
    MAX_FILE_BYTES,
    PENDING,
    RESERVE,
    RESERVE_BYTES,
    FileLock,
    FileStore,
    StoreError,
    _os_error,
    read_file,
    real_dir,
)
from testbench.pki import TestCA, key_pem

_CA = TestCA("file store hardening CA")
DIRECTORY = "https://ca.test/directory"
LINK_FIX = "certkeeper never follows links inside its store; remove it (move the real directory there if it is yours)"


def issued(serial: int, names: tuple[str, ...] = ("hard.test",)) -> IssuedCert:
    now = datetime.datetime.now(datetime.UTC)
    leaf = _CA.issue(names, serial=serial, not_after=now + datetime.timedelta(days=90))
    return IssuedCert(leaf.key_pem, leaf.cert_pem, _CA.cert_pem, cert_info(leaf.cert_pem))


def mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def refusal(call: object, *args: object) -> str:
    assert callable(call)
    with pytest.raises(StoreError) as caught:
        call(*args)
    return str(caught.value)


@pytest.fixture
def store(tmp_path: Path) -> FileStore:
    return FileStore(tmp_path / "store")


@pytest.fixture
def lineage(store: FileStore) -> Path:
    assert store.save("hard.test", issued(1), {"names": ["hard.test"]})
    return store.root / "hard.test"


# -- planted links and wrong kinds of file are refused, with the path and the reason ----------------


def test_a_lineage_that_is_a_link_is_refused(store: FileStore, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    store.root.mkdir()
    os.symlink(elsewhere, store.root / "hard.test")
    line = f"refusing to use {store.root / 'hard.test'}: it is a symbolic link: {LINK_FIX}"
    assert refusal(store.save, "hard.test", issued(1), {}) == line
    assert refusal(store.save_state, "hard.test", {}) == line
    assert list(elsewhere.iterdir()) == [], "nothing was written through the link"
    assert store.lineages() == [], "a link is not a lineage"


def test_a_lineage_that_is_a_file_is_refused(store: FileStore) -> None:
    store.root.mkdir()
    (store.root / "hard.test").write_text("not a directory")
    assert refusal(store.save_state, "hard.test", {}) == (
        f"refusing to use {store.root / 'hard.test'}: it is not a directory: {LINK_FIX}"
    )


def test_current_must_be_a_link_into_versions(store: FileStore, lineage: Path) -> None:
    current = lineage / "current"
    current.unlink()
    current.mkdir()
    loaded = store.load("hard.test")
    assert loaded is not None and not loaded.usable
    assert loaded.problem == f"unreadable: refusing to use {current}: it is not a symbolic link: {LINK_FIX}"
    current.rmdir()
    os.symlink("../../elsewhere", current)
    assert refusal(store.repair_links, "hard.test") == (
        f"refusing to use {current}: it points to '../../elsewhere', not into versions/: {LINK_FIX}"
    )


def test_current_naming_a_missing_version_is_no_certificate(store: FileStore, lineage: Path) -> None:
    (lineage / "current").unlink()
    os.symlink("versions/9", lineage / "current")
    assert store.load("hard.test") is None
    assert store.repair_links("hard.test") == []


def test_a_directory_where_a_consumer_link_belongs_is_refused(store: FileStore, lineage: Path) -> None:
    (lineage / "cert.pem").unlink()
    (lineage / "cert.pem").mkdir()
    assert refusal(store.repair_links, "hard.test") == (
        f"refusing to use {lineage / 'cert.pem'}: it is a directory where a link to current/ belongs: {LINK_FIX}"
    )


def test_wrong_or_missing_consumer_links_are_repaired_and_named(store: FileStore, lineage: Path) -> None:
    assert store.repair_links("hard.test") == [], "correct links are left alone"
    (lineage / "chain.pem").unlink()
    os.symlink("versions/1/chain.pem", lineage / "chain.pem")  # a link, but not the one readers rely on
    (lineage / "privkey.pem").unlink()
    (lineage / "meta.json").unlink()
    (lineage / "meta.json").write_text("{}")  # a plain file where the link belongs
    assert store.repair_links("hard.test") == ["chain.pem", "privkey.pem", "meta.json"]
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem", "meta.json"):
        assert os.readlink(lineage / name) == f"current/{name}"


def test_read_file_refuses_links_and_what_is_not_a_file(tmp_path: Path) -> None:
    (tmp_path / "real").write_bytes(b"data")
    os.symlink("real", tmp_path / "link")
    with pytest.raises(OSError) as caught:
        read_file(tmp_path / "link")
    assert caught.value.errno == errno.ELOOP
    device = Path("/dev/null")  # opens fine, reads forever empty: not a file the store wrote
    with pytest.raises(OSError) as caught:
        read_file(device)
    assert (caught.value.errno, caught.value.strerror, caught.value.filename) == (
        errno.EINVAL,
        "not a regular file",
        str(device),
    )


def test_read_file_reads_at_most_one_mebibyte(tmp_path: Path) -> None:
    (tmp_path / "big").write_bytes(b"x" * (MAX_FILE_BYTES + 10))
    assert len(read_file(tmp_path / "big")) == MAX_FILE_BYTES


def test_an_oversized_state_is_unreadable_not_read_whole(store: FileStore) -> None:
    store.save_state("hard.test", {})
    huge = json.dumps({"last_error": "x" * (2 * MAX_FILE_BYTES)})
    (store.root / "hard.test" / "state.json").write_text(huge)
    state = store.load_state("hard.test")
    assert isinstance(state, str) and state.startswith("unreadable (Unterminated string")


def test_linked_state_or_certificate_files_are_unreadable(store: FileStore, lineage: Path, tmp_path: Path) -> None:
    (tmp_path / "planted.json").write_text('{"failures": 0}')
    os.symlink(tmp_path / "planted.json", lineage / "state.json")
    assert store.load_state("hard.test") == "unreadable (Too many levels of symbolic links)"
    version = lineage / "versions" / "1"
    (version / "cert.pem").rename(tmp_path / "cert.pem")
    os.symlink(tmp_path / "cert.pem", version / "cert.pem")
    loaded = store.load("hard.test")
    assert loaded is not None and loaded.problem == "unreadable: Too many levels of symbolic links"
    assert (loaded.key_pem, loaded.cert_pem, loaded.chain_pem, loaded.info, loaded.meta) == (b"", b"", b"", None, {})
    (version / "cert.pem").unlink()
    (version / "cert.pem").mkdir()
    loaded = store.load("hard.test")
    assert loaded is not None and loaded.problem == "unreadable: Is a directory"


def test_meta_that_is_not_an_object_is_reported(store: FileStore, lineage: Path) -> None:
    (lineage / "versions" / "1" / "meta.json").write_text("[1, 2]")
    loaded = store.load("hard.test")
    assert loaded is not None and loaded.usable and loaded.meta == {}
    assert loaded.meta_problem == "meta.json holds list, not an object"
    (lineage / "versions" / "1" / "meta.json").unlink()
    loaded = store.load("hard.test")
    assert loaded is not None and loaded.meta_problem == "meta.json is unreadable (No such file or directory)"
    store.rewrite_meta("hard.test", {"names": ["hard.test"]})
    loaded = store.load("hard.test")
    assert loaded is not None and loaded.meta == {"names": ["hard.test"]} and loaded.meta_problem is None
    meta = {"serial": "0a", "names": ["hard.test"]}
    store.rewrite_meta("hard.test", meta)
    written = (lineage / "versions" / "1" / "meta.json").read_text()
    assert written == json.dumps(meta, indent=2, sort_keys=True) + "\n", "the same layout save() writes"
    assert mode(lineage / "versions" / "1" / "meta.json") == 0o644


def test_rewrite_meta_without_a_certificate_writes_nothing(store: FileStore) -> None:
    store.rewrite_meta("hard.test", {"names": ["hard.test"]})
    assert not store.root.exists()
    store.save_state("hard.test", {})
    store.rewrite_meta("hard.test", {"names": ["hard.test"]})
    assert sorted(p.name for p in (store.root / "hard.test").iterdir()) == ["state.json"]


# -- modes: whatever the umask or an earlier chmod, the store's directories get their modes back -----


def test_modes_do_not_depend_on_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        store = FileStore(tmp_path / "store")
        store.save("hard.test", issued(1), {})
    finally:
        os.umask(old)
    lineage = tmp_path / "store" / "hard.test"
    assert mode(lineage) == 0o755, "a web server's user must reach the links"
    assert mode(lineage / "versions" / "1") == 0o755 and mode(lineage / "versions") == 0o700


def test_a_changed_directory_mode_is_put_back(store: FileStore, lineage: Path) -> None:
    os.chmod(lineage, 0o700)
    os.chmod(lineage / "versions", 0o777)
    store.save("hard.test", issued(2), {})
    assert mode(lineage) == 0o755 and mode(lineage / "versions") == 0o700


def test_real_dir_creates_with_the_mode_and_tolerates_a_racing_creator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert real_dir(tmp_path / "absent") is False and not (tmp_path / "absent").exists()
    assert real_dir(tmp_path / "made", 0o700) is True and mode(tmp_path / "made") == 0o700
    real_mkdir = os.mkdir

    def another_process_was_first(path: Path, mode: int = 0o777) -> None:
        real_mkdir(path, 0o755)
        raise FileExistsError(errno.EEXIST, "File exists", str(path))

    monkeypatch.setattr(files_module.os, "mkdir", another_process_was_first)
    assert real_dir(tmp_path / "raced", 0o700) is True
    monkeypatch.undo()
    os.symlink(tmp_path / "made", tmp_path / "link")
    assert refusal(real_dir, tmp_path / "link", 0o700).startswith(f"refusing to use {tmp_path / 'link'}: it is a ")


def test_write_atomic_removes_its_temporary_file_on_failure(tmp_path: Path) -> None:
    with pytest.raises(TypeError):
        files_module.write_atomic(tmp_path / "state.json", None)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


# -- versions ----------------------------------------------------------------------------------------


def test_planted_and_stray_entries_in_versions_are_neither_counted_nor_followed(
    store: FileStore, lineage: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("mine")
    os.symlink(outside, lineage / "versions" / "7")
    (lineage / "versions" / "notes").mkdir()
    (lineage / "versions" / "5").write_text("a file, not a version")
    assert store.save("hard.test", issued(2), {})
    assert os.readlink(lineage / "current") == "versions/2", "the planted 7 does not push the numbering on"
    assert store.save("hard.test", issued(3), {})
    assert (outside / "keep.txt").read_text() == "mine", "pruning never follows a link out of the store"
    assert sorted(p.name for p in (lineage / "versions").iterdir()) == ["2", "3", "5", "7", "notes"]


def test_lineages_skip_what_is_not_a_certificate(store: FileStore, tmp_path: Path) -> None:
    for index in range(8):
        store.save_state(f"l{index}.test", {})
    root = store.root
    for index in range(8):
        (root / f"stray{index}").mkdir()
        (root / f".hidden{index}").mkdir()
        (root / f".hidden{index}" / "state.json").write_text("{}")
        (root / f"file{index}").write_text("x")
    (tmp_path / "real").mkdir()
    (tmp_path / "real" / "state.json").write_text("{}")
    os.symlink(tmp_path / "real", root / "linked.test")
    store.save_account(Account(directory_url=DIRECTORY, url="https://ca.test/acct/1", key_pem=new_key()))
    assert store.lineages() == [f"l{index}.test" for index in range(8)]


# -- the lock ----------------------------------------------------------------------------------------


def test_the_lock_is_exclusive_until_released(store: FileStore) -> None:
    held = store.lock("hard.test")
    assert held is not None
    lock_file = store.root / "hard.test" / ".lock"
    assert mode(lock_file) == 0o600
    assert store.lock("hard.test") is None, "a second run must wait"
    held.release()
    held.release()  # twice is harmless: it closes nothing else
    os.fstat(1)
    again = store.lock("hard.test")
    assert again is not None
    again.release()


def test_a_waiting_lock_is_the_default(store: FileStore, tmp_path: Path) -> None:
    held = FileLock(tmp_path / "lock")
    with pytest.raises(files_module.Busy, match=str(tmp_path / "lock")):
        FileLock(tmp_path / "lock", wait=False)
    got: list[FileLock | BaseException] = []

    def wait_for_it() -> None:
        try:
            got.append(FileLock(tmp_path / "lock"))  # blocks until the holder lets go
        except BaseException as error:
            got.append(error)

    waiter = threading.Thread(target=wait_for_it, daemon=True)
    waiter.start()
    waiter.join(0.3)
    assert waiter.is_alive() and got == [], "a waiting lock waits while another holds it"
    held.release()
    waiter.join(10)
    assert len(got) == 1 and isinstance(got[0], FileLock), got
    got[0].release()


def test_a_linked_lock_file_is_refused(store: FileStore, tmp_path: Path) -> None:
    store.save_state("hard.test", {})
    os.symlink(tmp_path / "elsewhere", store.root / "hard.test" / ".lock")
    assert refusal(store.lock, "hard.test") == (
        f"refusing to use {store.root / 'hard.test' / '.lock'}: it is a symbolic link: {LINK_FIX}"
    )
    assert not (tmp_path / "elsewhere").exists()


def test_a_lock_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(StoreError) as caught:
        FileLock(tmp_path / "missing" / ".lock")
    assert str(caught.value) == (
        f"cannot write to the store at {tmp_path / 'missing'} (No such file or directory): check the store"
    )


@pytest.mark.parametrize(
    ("code", "fix"),
    [
        (errno.ENOSPC, "free some space"),
        (errno.EDQUOT, "free some space"),
        (errno.EROFS, "mount it read-write or choose another --store"),
        (errno.EACCES, "fix its permissions or choose another --store"),
        (errno.EPERM, "fix its permissions or choose another --store"),
        (errno.EIO, "check the store"),
    ],
)
def test_each_store_failure_says_how_to_fix_it(code: int, fix: str) -> None:
    error = _os_error("write to the store at", Path("/srv/certs"), OSError(code, os.strerror(code)))
    assert str(error) == f"cannot write to the store at /srv/certs ({os.strerror(code)}): {fix}"


def test_a_store_failure_without_an_errno_still_reads_well() -> None:
    assert str(_os_error("read", Path("/srv/certs"), OSError("odd"))) == "cannot read /srv/certs (odd): check the store"


# -- before ordering: room set aside; after ordering: the certificate kept until it is stored --------


def test_check_writable_sets_room_aside(store: FileStore) -> None:
    store.check_writable("hard.test")
    reserve = store.root / "hard.test" / RESERVE
    assert reserve.stat().st_size == RESERVE_BYTES and reserve.stat().st_blocks * 512 >= RESERVE_BYTES
    assert mode(reserve) == 0o600
    assert mode(store.root) == 0o700 and mode(store.root / "hard.test") == 0o755


def test_check_writable_on_a_full_store_is_refused_and_leaves_no_reserve(
    store: FileStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.save_state("hard.test", {})
    real = os.statvfs

    def nearly_full(path: object) -> os.statvfs_result:
        room = real(path)  # type: ignore[arg-type]
        return os.statvfs_result((room.f_bsize, 4096, room.f_blocks, 255, 255, *tuple(room)[5:]))

    monkeypatch.setattr(files_module.os, "statvfs", nearly_full)  # 255 blocks of 4 KiB: under 1 MiB
    assert refusal(store.check_writable, "hard.test") == (
        f"cannot write to the store at {store.root / 'hard.test'} (No space left on device): free some space"
    )
    assert not (store.root / "hard.test" / RESERVE).exists()

    def roomy(path: object) -> os.statvfs_result:
        room = real(path)  # type: ignore[arg-type]
        return os.statvfs_result((room.f_bsize, 4096, room.f_blocks, 256, 256, *tuple(room)[5:]))

    monkeypatch.setattr(files_module.os, "statvfs", roomy)  # exactly 1 MiB is enough
    store.check_writable("hard.test")


def test_check_writable_refuses_a_linked_reserve(store: FileStore, tmp_path: Path) -> None:
    store.save_state("hard.test", {})
    os.symlink(tmp_path / "target", store.root / "hard.test" / RESERVE)
    assert refusal(store.check_writable, "hard.test") == (
        f"cannot write to the store at {store.root / 'hard.test'} (Too many levels of symbolic links): check the store"
    )
    assert not (tmp_path / "target").exists() and not os.path.lexists(store.root / "hard.test" / RESERVE)


def test_check_writable_on_a_store_that_cannot_be_made(tmp_path: Path) -> None:
    (tmp_path / "store").mkdir()
    (tmp_path / "store" / "hard.test").write_text("")
    with pytest.raises(StoreError, match="it is not a directory"):
        FileStore(tmp_path / "store").check_writable("hard.test")


def test_a_kept_certificate_uses_the_reserved_room(store: FileStore) -> None:
    cert = issued(1)
    store.check_writable("hard.test")
    where = store.save_pending("hard.test", cert)
    pending = store.root / "hard.test" / PENDING
    assert where == str(pending)
    assert not (store.root / "hard.test" / RESERVE).exists(), "the reserve became the pending file"
    assert pending.stat().st_size == RESERVE_BYTES, "padded: the reserved blocks stay taken"
    assert mode(pending) == 0o600
    assert json.loads(pending.read_bytes()) == {
        "key_pem": cert.key_pem.decode(),
        "cert_pem": cert.cert_pem.decode(),
        "chain_pem": cert.chain_pem.decode(),
    }
    assert store.load_pending("hard.test") == cert
    store.drop_pending("hard.test")
    assert store.load_pending("hard.test") is None and not pending.exists()


def test_a_kept_certificate_without_reserve_is_written_atomically(store: FileStore) -> None:
    cert = issued(1)
    store.save_pending("hard.test", cert)
    pending = store.root / "hard.test" / PENDING
    assert mode(pending) == 0o600 and pending.stat().st_size < RESERVE_BYTES
    assert store.load_pending("hard.test") == cert
    assert sorted(p.name for p in (store.root / "hard.test").iterdir()) == [PENDING]
    assert store.lineages() == ["hard.test"], "a kept certificate makes a lineage"


def test_a_reserve_too_small_for_the_certificate_is_not_used(store: FileStore) -> None:
    cert = issued(1)
    big = IssuedCert(cert.key_pem, cert.cert_pem, cert.chain_pem * 200, cert.info)
    store.check_writable("hard.test")
    store.save_pending("hard.test", big)
    assert store.load_pending("hard.test") == big
    assert (store.root / "hard.test" / RESERVE).exists(), "the too-small reserve is left as it was"


def test_a_damaged_kept_certificate_is_dropped(store: FileStore) -> None:
    store.save_pending("hard.test", issued(1))
    pending = store.root / "hard.test" / PENDING
    pending.write_text('{"key_pem": "x"}')
    store.check_writable("hard.test")
    assert store.load_pending("hard.test") is None
    assert not pending.exists() and not (store.root / "hard.test" / RESERVE).exists()
    assert store.load_pending("other.test") is None


# -- leftovers of killed runs ------------------------------------------------------------------------


def test_tidy_removes_leftovers_and_restores_links(store: FileStore, lineage: Path) -> None:
    (lineage / ".state.json.abc123").write_text("half")
    (lineage / ".current.tmp").symlink_to("versions/1")
    (lineage / "versions" / ".new-xyz").mkdir()
    (lineage / "versions" / ".new-xyz" / "privkey.pem").write_text("half")
    (lineage / "cert.pem").unlink()
    notes = store.tidy("hard.test")
    assert sorted(notes) == sorted(
        [
            "removed .state.json.abc123 left by an interrupted run",
            "removed .current.tmp left by an interrupted run",
            "removed .new-xyz left by an interrupted run",
            "restored the link cert.pem",
        ]
    )
    assert sorted(p.name for p in lineage.iterdir() if p.name.startswith(".")) == []
    assert sorted(p.name for p in (lineage / "versions").iterdir()) == ["1"]
    (lineage / "chain.pem").unlink()
    (lineage / "fullchain.pem").unlink()
    assert store.tidy("hard.test") == ["restored the links chain.pem, fullchain.pem"]
    assert store.tidy("hard.test") == []
    assert store.tidy("absent.test") == []


def test_tidy_keeps_the_lock_and_works_without_versions(store: FileStore) -> None:
    held = store.lock("hard.test")
    assert held is not None
    base = store.root / "hard.test"
    (base / ".reserve").write_bytes(b"")
    assert store.tidy("hard.test") == ["removed .reserve left by an interrupted run"]
    assert sorted(p.name for p in base.iterdir()) == [".lock"]
    held.release()


# -- the ACME account --------------------------------------------------------------------------------


def new_key() -> bytes:
    return key_pem(ec.generate_private_key(ec.SECP256R1()))


def test_the_account_lock_tidies_unfinished_registrations(store: FileStore) -> None:
    store.save_account(Account(directory_url=DIRECTORY, url="https://ca.test/acct/1", key_pem=new_key()))
    accounts = store.root / "accounts"
    (accounts / ".new-abc").mkdir()
    (accounts / ".new-abc" / "key.pem").write_text("half")
    home = accounts / account_id(DIRECTORY)
    (home / ".account.json.xyz").write_text("half")
    held = store.account_lock(DIRECTORY)
    assert mode(accounts) == 0o700 and mode(accounts / ".lock") == 0o600
    assert sorted(p.name for p in accounts.iterdir()) == [".lock", account_id(DIRECTORY)]
    assert sorted(p.name for p in home.iterdir()) == ["account.json", "key.pem"]
    held.release()


def test_the_account_lock_makes_the_store(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "new" / "store")
    held = store.account_lock(DIRECTORY)
    assert mode(tmp_path / "new" / "store") == 0o700 and mode(tmp_path / "new" / "store" / "accounts") == 0o700
    held.release()


def test_account_directories_lists_each_ca_and_skips_damage(store: FileStore) -> None:
    assert store.account_directories() == []
    other = "https://other.test/directory"
    for url in (DIRECTORY, other):
        store.save_account(Account(directory_url=url, url=f"{url}/acct/1", key_pem=new_key()))
    accounts = store.root / "accounts"
    (accounts / "000-broken").mkdir()  # sorted first: one damaged entry does not end the list
    (accounts / "000-broken" / "account.json").write_text("[]")
    (accounts / "nourl").mkdir()
    (accounts / "nourl" / "account.json").write_text("{}")
    (accounts / "empty").mkdir()
    assert sorted(store.account_directories()) == sorted([DIRECTORY, other])


def test_a_corrected_account_url_replaces_only_its_record(store: FileStore) -> None:
    key = new_key()
    store.save_account(Account(directory_url=DIRECTORY, url="https://ca.test/acct/1", key_pem=key))
    home = store.root / "accounts" / account_id(DIRECTORY)
    (home / "account.json").write_text("{}")
    os.utime(home / "key.pem", (0, 0))
    store.save_account(Account(directory_url=DIRECTORY, url="https://ca.test/acct/2", key_pem=key))
    assert os.stat(home / "key.pem").st_mtime == 0, "the key file is not rewritten"
    loaded = store.load_account(DIRECTORY)
    assert loaded is not None and loaded.url == "https://ca.test/acct/2" and loaded.verified
    assert mode(home / "account.json") == 0o600 and mode(home) == 0o700


def test_an_account_missing_its_key_is_replaced_whole(store: FileStore) -> None:
    store.save_account(Account(directory_url=DIRECTORY, url="https://ca.test/acct/1", key_pem=new_key()))
    home = store.root / "accounts" / account_id(DIRECTORY)
    (home / "key.pem").unlink()
    (home / "stale").write_text("x")
    key = new_key()
    store.save_account(Account(directory_url=DIRECTORY, url="https://ca.test/acct/3", key_pem=key))
    assert sorted(p.name for p in home.iterdir()) == ["account.json", "key.pem"]
    assert (home / "key.pem").read_bytes() == key and mode(home / "key.pem") == 0o600
    assert not [p for p in (store.root / "accounts").iterdir() if p.name.startswith(".new-")]


def test_an_account_whose_key_does_not_match_its_record_is_not_verified(store: FileStore) -> None:
    store.save_account(Account(directory_url=DIRECTORY, url="https://ca.test/acct/1", key_pem=new_key()))
    home = store.root / "accounts" / account_id(DIRECTORY)
    (home / "key.pem").write_bytes(new_key())
    loaded = store.load_account(DIRECTORY)
    assert loaded is not None and not loaded.verified
    (home / "account.json").write_text(json.dumps({"url": 5}))
    assert store.load_account(DIRECTORY) is None, "a URL that is not text is no account"


def test_a_new_account_record_is_private_and_readable(
    store: FileStore, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files_module.tempfile, "tempdir", str(tmp_path / "no-such-temp-dir"))  # made beside it
    account = Account(directory_url=DIRECTORY, url="https://ca.test/acct/1", key_pem=new_key())
    store.save_account(account)
    record = store.root / "accounts" / account_id(DIRECTORY) / "account.json"
    assert mode(record) == 0o600
    payload = {"url": account.url, "directory_url": DIRECTORY, "key_thumbprint": key_thumbprint(account.key_pem)}
    assert record.read_text() == json.dumps(payload, indent=2) + "\n"


def test_a_failed_account_write_leaves_no_staging_directory(store: FileStore, monkeypatch: pytest.MonkeyPatch) -> None:
    def disk_error(path: Path) -> None:
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(files_module, "_fsync_dir", disk_error)  # the disk fails before the rename
    with pytest.raises(OSError, match="Input/output error"):
        store.save_account(Account(directory_url=DIRECTORY, url="https://ca.test/acct/1", key_pem=new_key()))
    assert sorted(p.name for p in (store.root / "accounts").iterdir()) == [], "no half-made account is left"
    monkeypatch.undo()
    store.tidy_accounts()
    FileStore(store.root.parent / "none").tidy_accounts()  # no accounts folder: nothing to do


def test_a_lineage_name_the_file_system_refuses_is_a_clear_line(store: FileStore) -> None:
    name = "a" * 300 + ".test"
    assert refusal(store.check_writable, name) == (
        f"cannot write to the store at {store.root / name} (File name too long): check the store"
    )


def test_a_directory_where_the_reserve_belongs_is_refused(store: FileStore) -> None:
    store.save_state("hard.test", {})
    (store.root / "hard.test" / RESERVE).mkdir()
    assert refusal(store.check_writable, "hard.test") == (
        f"cannot write to the store at {store.root / 'hard.test'} (Is a directory): check the store"
    )


def test_a_certificate_filling_the_reserve_exactly_uses_it(store: FileStore) -> None:
    cert = issued(1)
    empty_chain = IssuedCert(cert.key_pem, cert.cert_pem, b"", cert.info)
    base_size = len(json.dumps({"key_pem": cert.key_pem.decode(), "cert_pem": cert.cert_pem.decode(), "chain_pem": ""}))
    exact = IssuedCert(cert.key_pem, cert.cert_pem, b"x" * (RESERVE_BYTES - base_size), cert.info)
    assert empty_chain != exact
    store.check_writable("hard.test")
    store.save_pending("hard.test", exact)
    assert not (store.root / "hard.test" / RESERVE).exists(), "a certificate of exactly the reserved size fits"
    assert store.load_pending("hard.test") == exact


def test_a_linked_reserve_is_never_written_through(store: FileStore, tmp_path: Path) -> None:
    store.save_state("hard.test", {})
    (tmp_path / "outside").write_bytes(b"mine")
    os.symlink(tmp_path / "outside", store.root / "hard.test" / RESERVE)
    with pytest.raises(OSError) as caught:
        store.save_pending("hard.test", issued(1))
    assert caught.value.errno == errno.ELOOP
    assert (tmp_path / "outside").read_bytes() == b"mine"
