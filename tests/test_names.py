"""Names as certificates carry them: one lineage per first name, IDNA 2008, first names over 64 characters."""

from __future__ import annotations

from pathlib import Path

import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from certkeeper.crypto import generate_key, make_csr
from certkeeper.errors import ConfigError
from certkeeper.spec import KeyType, normalize_names
from testbench.ari import AcmeFront
from testbench.command import Env, Run, one_error_line
from testbench.pebble import Pebble


def dns_names(cert: x509.Certificate) -> list[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return list(san.get_values_for_type(x509.DNSName))


# -- one lineage per first name (defect 5) ---------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "lines"),
    [
        ("dup.test a.dup.test\n# a comment\ndup.test b.dup.test\n", ("line 1", "line 3")),
        ("Dup.Test. one.test\nother.test\ndup.test two.test\n", ("line 1", "line 3")),
        ("bücher.test\nxn--bcher-kva.test www.bücher.test\n", ("line 1", "line 2")),
        ("dup.test\ndup.test a.test\ndup.test b.test\n", ("line 1", "line 2", "line 3")),
    ],
    ids=["same-first-name", "same-after-normalising", "idn-and-its-a-label", "three-lines"],
)
def test_two_lines_with_one_first_name_are_refused_before_any_order(
    content: str, lines: tuple[str, ...], ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    names = tmp_path / "names.txt"
    names.write_text(content)
    result = certkeeper(ari_env, "issue", "--file", str(names))
    assert result.returncode == 2
    line = one_error_line(result)
    for number in lines:
        assert number in line
    assert "same first name" in line
    assert ari.recorded_requests() == [], "nothing may reach the CA for a file that cannot be issued"
    assert not store.exists()


# -- IDNA 2008 / UTS 46 (defect 8) ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "ascii_name"),
    [
        ("straße.example.com", "xn--strae-oqa.example.com"),  # IDNA 2003 gave strasse.example.com
        ("BÜCHER.example", "xn--bcher-kva.example"),
        ("σας.example", "xn--mxa8ab.example"),  # final sigma stays final (IDNA 2003 made it σ)
        ("bücher。example", "xn--bcher-kva.example"),  # ideographic full stop separates labels
        ("bücher.example。", "xn--bcher-kva.example"),  # ... and ends a name as a dot does
        ("ｅｘａｍｐｌｅ.com", "example.com"),  # full-width letters map to ASCII
        ("xn--strae-oqa.example.com", "xn--strae-oqa.example.com"),
    ],
)
def test_internationalized_names_follow_idna_2008(raw: str, ascii_name: str) -> None:
    assert normalize_names([raw]) == (ascii_name,)


@pytest.mark.parametrize(
    "raw",
    ["a\u200db.test", "☃.example", "xn--zz.test", "bü_cher.test", "\u0301a.test"],
    ids=["joiner", "symbol", "bad-a-label", "underscore", "leading-combining-mark"],
)
def test_invalid_internationalized_names_are_one_config_error(raw: str) -> None:
    with pytest.raises(ConfigError) as caught:
        normalize_names([raw])
    message = str(caught.value)
    assert "\n" not in message
    assert repr(raw) in message


def test_idn_is_issued_under_its_idna_2008_name(pebble: Pebble, env: Env, store: Path, certkeeper: Run) -> None:
    result = certkeeper(env, "issue", "straße.test", "www.straße.test")
    assert result.returncode == 0, result.stderr
    lineage = store / "xn--strae-oqa.test"
    cert = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    assert dns_names(cert) == ["xn--strae-oqa.test", "www.xn--strae-oqa.test"]


def test_invalid_idn_on_the_command_line_is_refused_before_any_order(
    ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    result = certkeeper(ari_env, "issue", "good.test", "☃.test")
    assert result.returncode == 2
    assert "is not a valid internationalized domain name" in one_error_line(result)
    assert ari.recorded_requests() == []
    assert not store.exists()


@settings(max_examples=3000, deadline=None)
@given(
    st.one_of(
        st.text(alphabet=st.characters(codec="utf-8"), max_size=80),
        # Near-valid names: labels of letters, hyphens, IDN characters, joiners and A-label prefixes.
        st.lists(st.text(alphabet="abz09-ßüσςΣ\u200d\u0301。*_", min_size=0, max_size=70), min_size=1, max_size=5).map(
            ".".join
        ),
        st.lists(st.sampled_from(["xn--", "bcher-kva", "strae-oqa", "zz", "a", "-", "ü"]), min_size=1, max_size=6).map(
            lambda parts: "".join(parts) + ".test"
        ),
    )
)
def test_any_text_is_a_valid_ascii_name_or_one_config_error(raw: str) -> None:
    try:
        names = normalize_names([raw])
    except ConfigError as error:
        assert "\n" not in str(error)
        return
    for name in names:
        assert name.isascii() and name == name.lower() and len(name) <= 253
        assert all(0 < len(label) <= 63 for label in name.split("."))


# -- a first name longer than a common name can hold (defect 7) -----------------------------------

LONG = "a" * 60 + ".long-first-name.test"  # 81 characters: over the 64 a common name holds


def test_csr_leaves_out_a_common_name_that_cannot_hold_the_first_name() -> None:
    key = generate_key(KeyType.EC_P256)
    long_csr = x509.load_pem_x509_csr(make_csr(key, (LONG, "short.test")))
    assert long_csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME) == []
    san = long_csr.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [LONG, "short.test"]
    short_csr = x509.load_pem_x509_csr(make_csr(key, ("short.test", LONG)))
    assert [a.value for a in short_csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)] == ["short.test"]


def test_first_name_over_64_characters_is_issued(ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run) -> None:
    result = certkeeper(ari_env, "issue", LONG, "www.long-first-name.test")
    assert result.returncode == 0, result.stderr
    assert len(ari.recorded_orders()) == 1
    cert = x509.load_pem_x509_certificate((store / LONG / "cert.pem").read_bytes())
    assert dns_names(cert) == [LONG, "www.long-first-name.test"]
    # What the CA writes as the subject is its choice (Pebble copies the first name even past 64).

    again = certkeeper(ari_env, "issue", LONG, "www.long-first-name.test")
    assert again.returncode == 0, again.stderr
    assert "still good" in again.stdout
    assert len(ari.recorded_orders()) == 1
