"""Pebble with its fault and policy switches: alternate chains, External Account Binding, rejected nonces."""

from __future__ import annotations

import base64
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from promtext import parse, value

from testbench.command import Env, Run, one_error_line
from testbench.pebble import Pebble, start_pebble

MakeEnv = Callable[[str, "str | Path", int, Path], Env]
EAB_KID = "kid-1"
EAB_KEY = base64.urlsafe_b64encode(bytes(range(32))).decode().rstrip("=")


def common_name(name: x509.Name) -> str:
    return str(name.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)


def chain_certs(path: Path) -> list[x509.Certificate]:
    return x509.load_pem_x509_certificates(path.read_bytes())


def openssl_verify(root_pem: bytes, lineage: Path, workdir: Path) -> subprocess.CompletedProcess[str]:
    root = workdir / "root.pem"
    root.write_bytes(root_pem)
    command = ["openssl", "verify", "-CAfile", str(root), "-untrusted", str(lineage / "chain.pem")]
    return subprocess.run([*command, str(lineage / "cert.pem")], capture_output=True, text=True)


def special_pebble(tmp_path_factory: pytest.TempPathFactory, **kwargs: object) -> Iterator[Pebble]:
    server = start_pebble(tmp_path_factory.mktemp("pebble-special"), **kwargs)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


# -- alternate chains ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alt_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    yield from special_pebble(tmp_path_factory, env={"PEBBLE_ALTERNATE_ROOTS": "2"})


@pytest.mark.parametrize("root_index", [1, 2])
def test_preferred_chain_picks_the_alternate_root(
    root_index: int, alt_pebble: Pebble, make_env: MakeEnv, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    root_pem = alt_pebble.root_pem(root_index)
    wanted = common_name(x509.load_pem_x509_certificate(root_pem).subject)
    assert wanted != common_name(x509.load_pem_x509_certificate(alt_pebble.root_pem(0)).subject)
    env = make_env(alt_pebble.directory_url, alt_pebble.ca_bundle, alt_pebble.http_port, store)
    result = certkeeper(env, "issue", "--preferred-chain", wanted, "alt.test")
    assert result.returncode == 0, result.stderr
    lineage = store / "alt.test"
    chain = chain_certs(lineage / "fullchain.pem")
    assert common_name(chain[-1].issuer) == wanted
    verified = openssl_verify(root_pem, lineage, tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert openssl_verify(alt_pebble.root_pem(0), lineage, tmp_path).returncode != 0


def test_default_chain_without_preference(
    alt_pebble: Pebble, make_env: MakeEnv, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    env = make_env(alt_pebble.directory_url, alt_pebble.ca_bundle, alt_pebble.http_port, store)
    assert certkeeper(env, "issue", "default-chain.test").returncode == 0
    verified = openssl_verify(alt_pebble.root_pem(0), store / "default-chain.test", tmp_path)
    assert verified.returncode == 0, verified.stdout + verified.stderr


# -- External Account Binding ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def eab_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    yield from special_pebble(tmp_path_factory, eab_keys={EAB_KID: EAB_KEY})


def test_eab_required_without_keys_is_a_clear_error(
    eab_pebble: Pebble, make_env: MakeEnv, store: Path, certkeeper: Run
) -> None:
    env = make_env(eab_pebble.directory_url, eab_pebble.ca_bundle, eab_pebble.http_port, store)
    result = certkeeper(env, "issue", "eab.test")
    assert result.returncode not in (0, 2)
    line = one_error_line(result)
    assert "requires External Account Binding" in line and "--eab-kid" in line and "--eab-hmac-key" in line
    assert not list(store.rglob("*.pem"))


def test_eab_with_wrong_key_is_refused(eab_pebble: Pebble, make_env: MakeEnv, store: Path, certkeeper: Run) -> None:
    env = make_env(eab_pebble.directory_url, eab_pebble.ca_bundle, eab_pebble.http_port, store)
    wrong = base64.urlsafe_b64encode(bytes(32)).decode().rstrip("=")
    result = certkeeper(env, "issue", "--eab-kid", EAB_KID, "--eab-hmac-key", wrong, "eab.test")
    assert result.returncode not in (0, 2)
    line = one_error_line(result)
    assert "refused the External Account Binding: check --eab-kid and --eab-hmac-key" in line
    assert "acme-challenge" not in line
    assert not list(store.rglob("*.pem"))


def test_eab_with_keys_issues(eab_pebble: Pebble, make_env: MakeEnv, store: Path, certkeeper: Run) -> None:
    env = make_env(eab_pebble.directory_url, eab_pebble.ca_bundle, eab_pebble.http_port, store)
    env.update(CERTKEEPER_EAB_KID=EAB_KID, CERTKEEPER_EAB_HMAC_KEY=EAB_KEY)  # as environment variables
    result = certkeeper(env, "issue", "eab.test", "www.eab.test")
    assert result.returncode == 0, result.stderr
    cert = x509.load_pem_x509_certificate((store / "eab.test" / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert set(names.get_values_for_type(x509.DNSName)) == {"eab.test", "www.eab.test"}
    # The bound account is reused: a second certificate needs no EAB keys any more.
    del env["CERTKEEPER_EAB_KID"], env["CERTKEEPER_EAB_HMAC_KEY"]
    again = certkeeper(env, "issue", "eab2.test")
    assert again.returncode == 0, again.stderr


# -- rejected nonces -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def nonce_pebble(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pebble]:
    yield from special_pebble(tmp_path_factory, env={"PEBBLE_WFE_NONCEREJECT": "50"})


def test_half_the_nonces_rejected_still_issues_every_certificate(
    nonce_pebble: Pebble, make_env: MakeEnv, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    names = [f"n{i}.nonce.test" for i in range(10)]
    name_file = tmp_path / "names.txt"
    name_file.write_text("".join(f"{n} www.{n}\n" for n in names))
    env = make_env(nonce_pebble.directory_url, nonce_pebble.ca_bundle, nonce_pebble.http_port, store)
    prom = tmp_path / "run.prom"
    result = certkeeper(
        env, "issue", "-vv", "--file", str(name_file), "--concurrency", "4", "--metrics-file", str(prom)
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "10 issued" in result.stdout
    for name in names:
        cert = x509.load_pem_x509_certificate((store / name / "cert.pem").read_bytes())
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert set(sans.get_values_for_type(x509.DNSName)) == {name, f"www.{name}"}
    assert "Configured to reject 50% of good nonces" in (nonce_pebble.workdir / "pebble.log").read_text()
    assert "CA rejected the nonce; retrying" in result.stderr, "the test only means something if nonces were rejected"
    # The run's metrics count the retries and the orders (each created once).
    samples = parse(prom.read_text())
    retries = value(samples, "certkeeper_acme_client_bad_nonce_retries_total", host="127.0.0.1")
    assert retries is not None and retries == result.stderr.count("CA rejected the nonce; retrying")
    created = value(samples, "certkeeper_acme_client_request_duration_seconds_count", endpoint="newOrder",
                    status="201")  # fmt: skip
    assert created == 10
