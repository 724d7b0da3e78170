"""The file store in process: layout, contents, modes, renewal state and the ACME account.

tests/test_store.py drives the store through the CLI and races readers against it; these pin what
each call leaves on disk, so a change to the layout a deploy hook or nginx reads is noticed.
"""

from __future__ import annotations

import datetime
import json
import os
import stat
import tempfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from certkeeper.acme.account import Account, account_id, key_thumbprint
from certkeeper.crypto import cert_info
from certkeeper.errors import ConfigError
from certkeeper.model import IssuedCert
from certkeeper.stores.files import FILES, FileStore, write_atomic
from testbench.pki import TestCA, key_pem

_CA = TestCA("file store test CA")
DIRECTORY = "https://ca.test/directory"


def issued(serial: int, names: tuple[str, ...] = ("files.test", "www.files.test")) -> IssuedCert:
    now = datetime.datetime.now(datetime.UTC)
    leaf = _CA.issue(names, serial=serial, not_after=now + datetime.timedelta(days=90))
    return IssuedCert(leaf.key_pem, leaf.cert_pem, _CA.cert_pem, cert_info(leaf.cert_pem))


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_an_empty_store_has_nothing(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "none")
    assert files.lineages() == []
    assert files.load("files.test") is None
    assert files.load_state("files.test") == {}
    assert files.load_account(DIRECTORY) is None
    assert not (tmp_path / "none").exists(), "reading must not create the store"


def test_a_saved_issuance_is_laid_out_for_readers(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "store")
    cert = issued(1)
    meta = {"serial": cert.info.serial, "names": ["files.test", "www.files.test"]}  # stored sorted
    assert files.save("files.test", cert, meta) is True

    lineage = tmp_path / "store" / "files.test"
    assert files.location("files.test") == str(lineage)
    version = lineage / "versions" / "1"
    assert os.readlink(lineage / "current") == "versions/1"
    for name in FILES:
        assert os.readlink(lineage / name) == f"current/{name}"
    assert (version / "cert.pem").read_bytes() == cert.cert_pem
    assert (version / "chain.pem").read_bytes() == _CA.cert_pem
    assert (version / "fullchain.pem").read_bytes() == cert.cert_pem + _CA.cert_pem
    assert (version / "privkey.pem").read_bytes() == cert.key_pem
    assert (version / "meta.json").read_text() == json.dumps(meta, indent=2, sort_keys=True) + "\n"

    assert mode(tmp_path / "store") == 0o700
    assert mode(version / "privkey.pem") == 0o600
    for name in ("cert.pem", "chain.pem", "fullchain.pem", "meta.json"):
        assert mode(version / name) == 0o644, name
    assert mode(version) == 0o755 and mode(lineage) == 0o755 and mode(lineage / "versions") == 0o700
    assert sorted(p.name for p in (lineage / "versions").iterdir()) == ["1"], "no staging directory left"

    loaded = files.load("files.test")
    assert loaded is not None and loaded.problem is None
    assert loaded.info == cert.info and loaded.meta == meta
    assert (loaded.key_pem, loaded.cert_pem, loaded.chain_pem) == (cert.key_pem, cert.cert_pem, _CA.cert_pem)
    assert files.lineages() == ["files.test"]


def test_two_versions_are_kept(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "store")
    certs = [issued(serial) for serial in (1, 2, 3, 4)]
    for cert in certs:
        assert files.save("files.test", cert, {"names": ["files.test"]})
    lineage = tmp_path / "store" / "files.test"
    assert sorted(p.name for p in (lineage / "versions").iterdir()) == ["3", "4"]
    assert os.readlink(lineage / "current") == "versions/4"
    loaded = files.load("files.test")
    assert loaded is not None and loaded.info is not None and loaded.info.serial == certs[3].info.serial
    assert files.save("files.test", certs[3], {}) is False, "the current issuance is not stored twice"
    assert sorted(p.name for p in (lineage / "versions").iterdir()) == ["3", "4"]


def test_lineages_are_the_directories_holding_a_certificate_or_state(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "store")
    files.save("b.test", issued(1, ("b.test",)), {})
    files.save_state("a.test", {"failures": 1})
    (tmp_path / "store" / "stray").mkdir()
    assert files.lineages() == ["a.test", "b.test"]


def test_an_unreadable_meta_is_reported_and_the_certificate_kept(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "store")
    files.save("files.test", issued(1), {"names": ["files.test"]})
    (tmp_path / "store" / "files.test" / "current" / "meta.json").write_text("{not json")
    loaded = files.load("files.test")
    # The PEM files are the certificate; a broken meta.json loses only the bookkeeping.
    assert loaded is not None and loaded.info is not None and loaded.problem is None
    assert loaded.meta == {} and loaded.meta_problem is not None
    assert loaded.meta_problem.startswith("meta.json is unreadable")


def test_renewal_state_round_trips(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "store")
    state = {"next_check": "2030-01-01T00:00:00+00:00", "failures": 2, "last_error": "CA said no"}
    files.save_state("files.test", {"failures": 1})
    files.save_state("files.test", state)
    assert files.load_state("files.test") == state
    path = tmp_path / "store" / "files.test" / "state.json"
    assert path.read_text() == json.dumps(state, indent=2, sort_keys=True)
    path.write_text("{half")
    broken = files.load_state("files.test")
    assert isinstance(broken, str) and broken.startswith("unreadable ("), "a broken state is reported, not fatal"


def new_key() -> bytes:
    return key_pem(ec.generate_private_key(ec.SECP256R1()))


def test_the_account_is_kept_beside_the_certificates(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "store")
    account = Account(directory_url=DIRECTORY, url="https://ca.test/acct/1", key_pem=new_key())
    files.save_account(
        Account(
            directory_url=DIRECTORY,
            url="https://ca.test/acct/0",
            key_pem=new_key(),
        )
    )
    files.save_account(account)
    assert files.load_account(DIRECTORY) == account
    assert files.load_account("https://other.test/directory") is None
    folder = tmp_path / "store" / "accounts" / account_id(DIRECTORY)
    assert mode(folder) == 0o700 and mode(folder / "key.pem") == 0o600
    written = json.loads((folder / "account.json").read_text())
    assert written["url"] == account.url and written["directory_url"] == DIRECTORY
    assert written["key_thumbprint"] == key_thumbprint(account.key_pem), "the URL is tied to its key"
    (folder / "account.json").write_text("{}")
    assert files.load_account(DIRECTORY) is None, "an account without its URL is no account"
    assert files.lineages() == [], "the accounts folder is not a certificate"


def test_a_store_that_cannot_be_created_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    files = FileStore(tmp_path / "file" / "store")
    with pytest.raises(ConfigError) as caught:
        files.save_state("files.test", {})
    assert (
        str(caught.value) == f"cannot create the store {tmp_path / 'file' / 'store'} (Not a directory): choose --store"
    )


def test_write_atomic_sets_the_mode_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "secret.pem"
    target.write_bytes(b"old")
    write_atomic(target, b"new", 0o600)
    assert target.read_bytes() == b"new" and mode(target) == 0o600
    write_atomic(tmp_path / "plain.txt", b"x")
    assert mode(tmp_path / "plain.txt") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["plain.txt", "secret.pem"]


def test_a_store_is_created_with_its_parents(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "a" / "b" / "store")
    files.save_state("files.test", {"failures": 0})
    assert files.load_state("files.test") == {"failures": 0}


def test_temporary_files_are_made_beside_their_target(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # A rename is atomic only within one file system: a temporary file in the system's temp
    # directory would be copied, not renamed. With no usable temp directory, writes still work.
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "no-such-temp-dir"))
    files = FileStore(tmp_path / "store")
    assert files.save("files.test", issued(1), {"names": ["files.test"]})
    files.save_state("files.test", {"failures": 0})
    assert files.load("files.test") is not None and files.load_state("files.test") == {"failures": 0}


def test_a_failed_write_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="bytes-like"):
        write_atomic(tmp_path / "target", "not bytes")  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []
    files = FileStore(tmp_path / "store")
    with pytest.raises(TypeError, match="not JSON serializable"):
        files.save("files.test", issued(1), {"unserializable": object()})
    assert list((tmp_path / "store" / "files.test" / "versions").iterdir()) == [], "a staging directory was left"
    assert files.load("files.test") is None
