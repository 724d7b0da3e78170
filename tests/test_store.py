"""The file store: version directories, an atomic ``current`` swap, the previous version kept."""

from __future__ import annotations

import datetime
import json
import os
import stat
import threading
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from certkeeper.crypto import cert_info
from certkeeper.model import IssuedCert
from certkeeper.stores.files import FileStore
from testbench.command import Env, Run
from testbench.pki import TestCA

PEM_FILES = ("cert.pem", "chain.pem", "fullchain.pem", "privkey.pem")


def spki_of_key(path: Path) -> bytes:
    key = serialization.load_pem_private_key(path.read_bytes(), password=None)
    return key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def spki_of_cert(path: Path) -> bytes:
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    return cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def versions(lineage: Path) -> list[str]:
    return sorted((p.name for p in (lineage / "versions").iterdir()), key=int)


def test_each_issuance_is_a_new_version_and_the_previous_is_kept(env: Env, store: Path, certkeeper: Run) -> None:
    lineage = store / "versions.test"
    serials = []
    for args in ((), ("--force",), ("--force",)):
        result = certkeeper(env, "issue", *args, "versions.test")
        assert result.returncode == 0, result.stderr
        serials.append(x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes()).serial_number)
    assert len(set(serials)) == 3

    assert versions(lineage) == ["2", "3"], "the current and the previous version are kept, older ones pruned"
    assert os.readlink(lineage / "current") == "versions/3"
    for name in PEM_FILES:
        assert os.readlink(lineage / name) == f"current/{name}"
    previous = lineage / "versions" / "2"
    assert x509.load_pem_x509_certificate((previous / "cert.pem").read_bytes()).serial_number == serials[1]
    for version in (previous, lineage / "versions" / "3"):
        assert spki_of_key(version / "privkey.pem") == spki_of_cert(version / "cert.pem")
        assert stat.S_IMODE((version / "privkey.pem").stat().st_mode) == 0o600
        assert json.loads((version / "meta.json").read_text())["names"] == ["versions.test"]
    leftovers = [p.name for p in lineage.rglob(".*")]
    assert leftovers == [".lock"], f"temporary files left behind: {leftovers}"  # the lock file stays


def test_a_corrupt_certificate_is_reported_and_replaced(env: Env, store: Path, certkeeper: Run) -> None:
    assert certkeeper(env, "issue", "corrupt.test").returncode == 0
    lineage = store / "corrupt.test"
    (lineage / "current" / "cert.pem").write_text("not a certificate\n")
    rows = json.loads(certkeeper(env, "status", "--json").stdout)
    assert rows[0]["problem"] and "unreadable" in rows[0]["problem"]
    result = certkeeper(env, "issue", "corrupt.test")
    assert result.returncode == 0, result.stderr
    assert spki_of_key(lineage / "privkey.pem") == spki_of_cert(lineage / "cert.pem")
    assert json.loads(certkeeper(env, "status", "--json").stdout)[0]["problem"] is None


# -- a reader never sees a key and a certificate from different issuances --------------------------


def _issued(name: str, number: int) -> IssuedCert:
    now = datetime.datetime.now(datetime.UTC)
    leaf = _CA.issue([name], serial=1000 + number, not_after=now + datetime.timedelta(days=90 + number))
    return IssuedCert(key_pem=leaf.key_pem, cert_pem=leaf.cert_pem, chain_pem=b"", info=cert_info(leaf.cert_pem))


_CA = TestCA("store test CA")


def test_reader_resolving_current_sees_a_matching_pair(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "store")
    lineage = Path(files.location("swap.test"))
    issuances = [_issued("swap.test", n) for n in range(40)]
    assert files.save("swap.test", issuances[0], {"names": ["swap.test"]})
    done = threading.Event()
    matched = 0
    pruned = 0
    problems: list[str] = []

    def current_number() -> int:
        return int(os.readlink(lineage / "current").rsplit("/", 1)[-1])

    def read() -> None:
        nonlocal matched, pruned
        while not done.is_set():
            version = (lineage / "current").resolve()  # resolve once, then read both files from it
            try:
                if spki_of_key(version / "privkey.pem") != spki_of_cert(version / "cert.pem"):
                    problems.append(f"version {version.name}: the key and the certificate are from two issuances")
                else:
                    matched += 1
            except FileNotFoundError as missing:
                # Only pruning may remove a version a reader resolved, and the store prunes a version
                # only after two newer ones are current. Anything else is a version made current
                # before its files were all there.
                now = current_number()
                if version.name.isdigit() and now >= int(version.name) + 2:
                    pruned += 1
                else:
                    problems.append(f"version {version.name} lacked {Path(str(missing.filename)).name} "
                                    f"while current was {now}")  # fmt: skip
            except Exception as error:  # a half-written file, a dangling link: all failures
                problems.append(f"version {version.name}: {type(error).__name__}: {error}")

    readers = [threading.Thread(target=read) for _ in range(2)]
    for reader in readers:
        reader.start()
    try:
        for issued in issuances[1:]:
            assert files.save("swap.test", issued, {"names": ["swap.test"]})
    finally:
        done.set()
        for reader in readers:
            reader.join()
    assert not problems, f"{len(problems)} bad reads of {matched + pruned + len(problems)}, e.g. {problems[:3]}"
    assert matched > 10, f"the readers hardly ran ({matched} good reads, {pruned} of pruned versions)"
    loaded = files.load("swap.test")
    assert loaded is not None and loaded.info is not None
    assert loaded.info.serial == issuances[-1].info.serial


def test_saving_the_current_issuance_again_changes_nothing(tmp_path: Path) -> None:
    files = FileStore(tmp_path / "store")
    issued = _issued("same.test", 1)
    assert files.save("same.test", issued, {"names": ["same.test"]}) is True
    assert files.save("same.test", issued, {"names": ["same.test"]}) is False
    assert versions(Path(files.location("same.test"))) == ["1"]
