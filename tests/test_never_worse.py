"""The never-worse rule: a stored certificate is replaced only by one at least as good.

``check_replacement`` runs between the CA's answer and the store, for files and Secrets alike. Each
refusal is shown here with a certificate crafted to have exactly one fault; the end-to-end tests
(tests/test_bad_certificates.py) show a CA sending such a certificate changes nothing stored.
"""

from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtensionOID

from certkeeper.crypto import cert_info
from certkeeper.errors import CertkeeperError
from certkeeper.model import IssuedCert
from certkeeper.stores.base import StoredCert, check_replacement
from testbench.pki import TestCA, cert_pem, key_pem

_CA = TestCA("never-worse test CA")
_KEY = ec.generate_private_key(ec.SECP256R1())
_OTHER_KEY = ec.generate_private_key(ec.SECP256R1())
NAMES = ("worse.test", "www.worse.test")
MINUTE = datetime.timedelta(minutes=1)
SECOND = datetime.timedelta(seconds=1)
DAY = datetime.timedelta(days=1)


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def issued(
    names: tuple[str, ...] = NAMES,
    *,
    not_before: datetime.timedelta = -5 * MINUTE,
    not_after: datetime.timedelta = 90 * DAY,
    key: ec.EllipticCurvePrivateKey = _KEY,
) -> IssuedCert:
    """A certificate for ``key`` valid from ``now + not_before`` to ``now + not_after``, held with ``_KEY``."""
    now = _now()
    leaf = _CA.issue(names, key=key, not_before=now + not_before, not_after=now + not_after)
    return IssuedCert(key_pem=key_pem(_KEY), cert_pem=leaf.cert_pem, chain_pem=b"", info=cert_info(leaf.cert_pem))


def stored(names: tuple[str, ...] = NAMES, *, not_after: datetime.timedelta = 60 * DAY) -> StoredCert:
    cert = issued(names, not_before=-30 * DAY, not_after=not_after)
    return StoredCert.parse(cert.key_pem, cert.cert_pem, b"", {})


def refused(new: IssuedCert, old: StoredCert | None, names: tuple[str, ...] = NAMES) -> str:
    with pytest.raises(CertkeeperError) as error:
        check_replacement(new, names, old)
    return str(error.value)


# -- each refusal ----------------------------------------------------------------------------------


def test_a_certificate_for_another_key_is_refused() -> None:
    assert "key does not match" in refused(issued(key=_OTHER_KEY), None)
    assert "key does not match" in refused(issued(key=_OTHER_KEY), stored())


@pytest.mark.parametrize(
    ("not_before", "not_after"),
    [(10 * MINUTE, 90 * DAY), (-90 * DAY, -MINUTE)],
    ids=["not-yet-valid", "already-expired"],
)
def test_a_certificate_not_valid_now_is_refused(not_before: datetime.timedelta, not_after: datetime.timedelta) -> None:
    assert "not valid now" in refused(issued(not_before=not_before, not_after=not_after), None)


def test_a_few_minutes_of_clock_skew_are_allowed() -> None:
    # CAs backdate, but a CA clock a little ahead of ours must not make every issuance fail.
    check_replacement(issued(not_before=4 * MINUTE), NAMES, None)


@pytest.mark.parametrize("lacking", ["worse.test", "www.worse.test"])
def test_a_certificate_lacking_a_requested_name_is_refused(lacking: str) -> None:
    fewer = tuple(n for n in NAMES if n != lacking)
    message = refused(issued(fewer), None)
    assert f"lacks {lacking}" in message
    assert "lacks" in refused(issued(fewer), stored())


def test_a_certificate_lacking_several_names_names_them_all() -> None:
    names = (*NAMES, "api.worse.test")
    assert "lacks api.worse.test, www.worse.test" in refused(issued(("worse.test",)), None, names)


def test_a_certificate_expiring_sooner_than_the_stored_one_is_refused() -> None:
    old = stored(not_after=60 * DAY)
    assert "expires sooner" in refused(issued(not_after=30 * DAY), old)
    assert "expires sooner" in refused(issued(not_after=60 * DAY - MINUTE), old)


# -- what is not worse ------------------------------------------------------------------------------


def test_a_good_certificate_is_accepted_with_or_without_one_stored() -> None:
    check_replacement(issued(), NAMES, None)
    check_replacement(issued(not_after=90 * DAY), NAMES, stored(not_after=60 * DAY))


def test_a_certificate_covering_more_names_is_accepted() -> None:
    check_replacement(issued((*NAMES, "extra.worse.test")), NAMES, stored())


def test_expiring_sooner_is_accepted_when_the_stored_one_cannot_serve() -> None:
    sooner = issued(not_after=10 * DAY)
    # The stored one has expired.
    check_replacement(sooner, NAMES, stored(not_after=-MINUTE))
    # The stored one is unusable (its key does not match it).
    broken = stored()
    broken = StoredCert.parse(key_pem(_OTHER_KEY), broken.cert_pem, b"", {})
    assert broken.problem is not None
    check_replacement(sooner, NAMES, broken)
    # The stored one lacks a name that is now requested.
    more = (*NAMES, "new.worse.test")
    check_replacement(issued(more, not_after=10 * DAY), more, stored())
    # The new one adds a name the stored one does not have.
    check_replacement(issued((*NAMES, "extra.worse.test"), not_after=10 * DAY), NAMES, stored())


def test_refusals_are_whole_sentences() -> None:
    assert refused(issued(key=_OTHER_KEY), None) == "refusing to store a certificate whose key does not match it"
    assert refused(issued(not_before=DAY), None) == "refusing to store a certificate that is not valid now"
    assert refused(issued(("worse.test",)), None) == "refusing to store a certificate that lacks www.worse.test"
    assert refused(issued(not_after=DAY), stored()) == "refusing to replace a certificate with one that expires sooner"


def test_the_clock_skew_allowance_is_five_minutes() -> None:
    check_replacement(issued(not_before=5 * MINUTE - 10 * SECOND), NAMES, None)
    assert "not valid now" in refused(issued(not_before=5 * MINUTE + 10 * SECOND), None)


def test_the_same_expiry_is_not_worse() -> None:
    # Certificates hold whole seconds: both end at the same instant.
    at = _now().replace(microsecond=0) + 60 * DAY
    leaf = _CA.issue(NAMES, key=_KEY, not_before=_now() - DAY, not_after=at)
    old = StoredCert.parse(key_pem(_KEY), leaf.cert_pem, b"", {})
    again = _CA.issue(NAMES, key=_KEY, not_before=_now() - MINUTE, not_after=at)
    check_replacement(IssuedCert(key_pem(_KEY), again.cert_pem, b"", cert_info(again.cert_pem)), NAMES, old)


# -- reading what a store holds ---------------------------------------------------------------------


def test_a_full_chain_is_split_into_the_leaf_and_its_chain() -> None:
    leaf = issued()
    meta = {"names": list(NAMES)}
    parsed = StoredCert.parse(leaf.key_pem, leaf.cert_pem + _CA.cert_pem, b"", meta)
    assert parsed.problem is None and parsed.info == leaf.info
    assert (parsed.key_pem, parsed.cert_pem, parsed.chain_pem, parsed.meta) == (
        leaf.key_pem,
        leaf.cert_pem,
        _CA.cert_pem,
        meta,
    )
    assert parsed.fullchain_pem == leaf.cert_pem + _CA.cert_pem
    # A chain stored on its own wins over what follows the leaf.
    assert StoredCert.parse(leaf.key_pem, leaf.cert_pem, b"CHAIN", meta).chain_pem == b"CHAIN"
    assert "PRIVATE" not in repr(parsed) and repr(parsed).startswith("StoredCert(info=")


def test_a_mismatched_pair_is_read_with_its_problem() -> None:
    leaf = issued()
    meta = {"names": list(NAMES)}
    parsed = StoredCert.parse(key_pem(_OTHER_KEY), leaf.cert_pem, b"CHAIN", meta)
    assert parsed.problem == "the private key does not match the certificate"
    assert parsed.info == leaf.info
    assert (parsed.key_pem, parsed.cert_pem, parsed.chain_pem, parsed.meta) == (
        key_pem(_OTHER_KEY),
        leaf.cert_pem,
        b"CHAIN",
        meta,
    )


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (b"", "unreadable: no certificate in it"),
        (b"not a certificate\n", "unreadable: the certificate is not readable PEM"),
        (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n", "unreadable: "),
    ],
    ids=["empty", "no-pem", "bad-der"],
)
def test_garbage_is_read_as_unusable_never_raised(content: bytes, problem: str) -> None:
    meta = {"names": ["x.test"]}
    parsed = StoredCert.parse(b"KEY", content, b"CHAIN", meta)
    assert parsed.info is None and parsed.problem is not None and parsed.problem.startswith(problem)
    assert (parsed.key_pem, parsed.cert_pem, parsed.chain_pem, parsed.meta) == (b"KEY", content, b"CHAIN", meta)


def test_a_good_certificate_with_an_unreadable_key_is_unusable() -> None:
    leaf = issued()
    meta = {"names": list(NAMES)}
    parsed = StoredCert.parse(b"not a key", leaf.cert_pem, b"CHAIN", meta)
    assert parsed.info is None and parsed.problem is not None and parsed.problem.startswith("unreadable: ")
    assert (parsed.key_pem, parsed.cert_pem, parsed.chain_pem, parsed.meta) == (
        b"not a key",
        leaf.cert_pem,
        b"CHAIN",
        meta,
    )


def test_a_chain_of_several_certificates_is_kept_whole() -> None:
    leaf = issued()
    middle, top = _CA.issue(["middle.test"]).cert_pem, _CA.cert_pem
    parsed = StoredCert.parse(leaf.key_pem, leaf.cert_pem + middle + top, b"", {})
    assert parsed.chain_pem == middle + top


def test_a_certificate_with_a_malformed_extension_is_unusable() -> None:
    # The parser reads extensions lazily: the damage shows only when the names are read.
    now = _now()
    damaged = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([]))
        .issuer_name(_CA.name)
        .public_key(_KEY.public_key())
        .serial_number(5)
        .not_valid_before(now - MINUTE)
        .not_valid_after(now + DAY)
        .add_extension(x509.UnrecognizedExtension(ExtensionOID.SUBJECT_ALTERNATIVE_NAME, b"\x30\x03\xff"), False)
        .sign(_CA.key, hashes.SHA256())
    )
    meta = {"names": list(NAMES)}
    cert = cert_pem(damaged)
    parsed = StoredCert.parse(key_pem(_KEY), cert, b"CHAIN", meta)
    assert parsed.info is None and parsed.problem is not None and parsed.problem.startswith("unreadable: ")
    assert (parsed.key_pem, parsed.cert_pem, parsed.chain_pem, parsed.meta) == (key_pem(_KEY), cert, b"CHAIN", meta)


def test_any_parser_surprise_is_one_short_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from certkeeper.stores import base

    good = issued()
    long_first_line = "x" * 300 + "\nsecond line"

    def surprise(message: str) -> object:
        def fail(_: bytes) -> object:
            raise RuntimeError(message)

        return fail

    monkeypatch.setattr(base, "cert_info", surprise(long_first_line))
    problem = StoredCert.parse(good.key_pem, good.cert_pem, b"", {}).problem
    assert problem == "unreadable: " + "x" * 200, "the first line only, at most 200 characters"
    monkeypatch.setattr(base, "cert_info", surprise(""))
    assert StoredCert.parse(good.key_pem, good.cert_pem, b"", {}).problem == "unreadable: RuntimeError"


def test_a_store_without_files_keeps_an_issued_certificate_in_memory() -> None:
    from certkeeper.stores.base import StoreDefaults

    first, second = StoreDefaults(), StoreDefaults()
    cert = issued()
    assert first.load_pending("a.test") is None
    assert first.save_pending("a.test", cert) == "memory"
    assert first.load_pending("a.test") is cert and first.load_pending("b.test") is None
    assert second.load_pending("a.test") is None, "each store keeps its own"
    first.drop_pending("b.test")  # nothing kept: no error
    first.drop_pending("a.test")
    assert first.load_pending("a.test") is None
