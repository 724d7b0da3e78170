"""The exact line a user reads for each refused name, key type, server, email or account binding.

tests/test_spec.py says which inputs are refused; this pins the whole message (what is wrong, then
how to fix it), and the edges of each rule: the longest valid label and name, every spelling.
"""

from __future__ import annotations

import pytest

from certkeeper.errors import ConfigError
from certkeeper.spec import (
    LETSENCRYPT,
    LETSENCRYPT_STAGING,
    CertSpec,
    IssuerSpec,
    KeyType,
    normalize_name,
    normalize_names,
    plain_http_off_loopback,
    resolve_server,
)


def message(call: object, *args: object, **kwargs: object) -> str:
    assert callable(call)
    with pytest.raises(ConfigError) as caught:
        call(*args, **kwargs)
    return str(caught.value)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("  ", "an empty name was given: give DNS names like example.com"),
        (".", "an empty name was given: give DNS names like example.com"),
        (
            "*.wild.test",
            "'*.wild.test' is a wildcard name: HTTP-01 cannot validate wildcards; list the exact names, "
            "or use DNS-01 validation",
        ),
        ("a..test", "'a..test' has an empty label: remove the doubled or leading dot"),
        (
            "-x.test",
            "'-x.test' has an invalid label '-x': labels are 1-63 letters, digits or hyphens, "
            "not starting or ending with a hyphen",
        ),
        ("host", "'host' is a single-label name: a public CA needs a full name like host.example.com"),
        ("host.42", "'host.42' ends in a numeric label: give a DNS name, not an address"),
        (
            "xn--a.\udcff.test",
            "'xn--a.\\udcff.test' is not a valid internationalized domain name (Codepoint U+DCFF not allowed "
            "at position 7 in 'xn--a.\\udcff.test'): check the spelling; names are converted by IDNA 2008 "
            "(UTS 46) as browsers do",
        ),
    ],
)
def test_each_refused_name_says_why_and_what_to_do(raw: str, says: str) -> None:
    assert message(normalize_name, raw) == says


@pytest.mark.parametrize(
    ("raw", "identifier"),
    [("10.0.0.1", "10.0.0.1"), ("[::1]", "::1"), ("2001:DB8:0:0::7", "2001:db8::7")],
)
def test_an_ip_address_becomes_its_canonical_identifier(raw: str, identifier: str) -> None:
    # RFC 8738: IP identifiers in canonical text form, so one address never makes two lineages.
    assert normalize_name(raw) == identifier


def test_the_longest_label_and_name_are_accepted_and_one_more_is_not() -> None:
    label63 = "a" * 63
    assert normalize_name(f"{label63}.test") == f"{label63}.test"
    assert "invalid label" in message(normalize_name, f"{'a' * 64}.test")
    assert normalize_name("a.b") == "a.b"  # one-character labels
    assert normalize_name("a-b.test") == "a-b.test"
    name253 = ".".join(["a" * 63] * 3 + ["b" * 61])
    assert len(name253) == 253 and normalize_name(name253) == name253
    name254 = name253 + "b"
    assert message(normalize_name, name254) == f"{name254!r} is longer than 253 characters"


def test_names_are_trimmed_lowercased_and_lose_the_trailing_dot() -> None:
    assert normalize_name("  WWW.Example.COM.  ") == "www.example.com"
    assert normalize_name("host.test1") == "host.test1", "only an all-digit last label is refused"
    assert normalize_name("a.42.test") == "a.42.test", "a numeric label is fine anywhere but last"
    assert "ends in a numeric label" in message(normalize_name, "a.b.42")
    assert normalize_name("HOST.EXAMPLEX") == "host.examplex", "only dots are trimmed from the end"


def test_wildcards_are_kept_when_allowed() -> None:
    assert normalize_name("*.Wild.test", allow_wildcard=True) == "*.wild.test"
    assert normalize_names(["*.wild.test", "wild.test"], allow_wildcard=True) == ("*.wild.test", "wild.test")
    assert CertSpec(("*.wild.test",)).lineage == "_.wild.test"
    assert "wildcard" in message(normalize_names, ["*.wild.test"])


def test_name_lists_split_on_commas_and_spaces_and_keep_the_first_order() -> None:
    assert normalize_names(["b.test,a.test  c.test", "a.test"]) == ("b.test", "a.test", "c.test")
    hundred = [f"n{i}.test" for i in range(100)]
    assert len(normalize_names(hundred)) == 100
    assert message(normalize_names, [*hundred, "n100.test"]) == (
        "101 names given: a certificate holds at most 100 names; split the list"
    )
    assert message(normalize_names, []) == (
        "no names given: give at least one DNS name, e.g. certkeeper issue example.com"
    )


@pytest.mark.parametrize(
    ("text", "key_type"),
    [
        (" EC-P384 ", KeyType.EC_P384),
        ("ec_p256", KeyType.EC_P256),
        ("ecp256", KeyType.EC_P256),
        ("p256", KeyType.EC_P256),
        ("rsa2048", KeyType.RSA_2048),
        ("rsa-3072", KeyType.RSA_3072),
    ],
)
def test_more_key_type_spellings(text: str, key_type: KeyType) -> None:
    assert KeyType.parse(text) is key_type


def test_an_unknown_key_type_names_what_was_given_and_the_choices() -> None:
    assert message(KeyType.parse, "dsa") == (
        "unknown key type 'dsa': use one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096"
    )


def test_servers() -> None:
    assert resolve_server(" letsencrypt ") == LETSENCRYPT
    assert resolve_server("letsencrypt-staging") == LETSENCRYPT_STAGING
    assert resolve_server(" http://127.0.0.1:14000/dir ") == "http://127.0.0.1:14000/dir"
    assert message(resolve_server, "ftp://ca/d") == (
        "server 'ftp://ca/d' is not a URL: give the CA's ACME directory URL, or letsencrypt / letsencrypt-staging"
    )
    assert "not a URL" in message(resolve_server, "https://")


def test_issuer_email_and_account_binding() -> None:
    assert IssuerSpec(email="me@example.com").email == "me@example.com"
    assert IssuerSpec().directory_url == LETSENCRYPT
    assert message(IssuerSpec, email="me@example") == (
        "email 'me@example' is not an address: give an address like you@example.com"
    )
    assert "not an address" in message(IssuerSpec, email="me @example.com")
    assert message(IssuerSpec, eab_kid="kid") == "external account binding needs both --eab-kid and --eab-hmac-key"
    assert "needs both" in message(IssuerSpec, eab_hmac_key="c2VjcmV0")
    assert IssuerSpec(eab_kid="kid", eab_hmac_key="c2VjcmV0").eab_kid == "kid"


def test_cert_spec_defaults() -> None:
    spec = CertSpec(("d.test",))
    assert (spec.key_type, spec.reuse_key, spec.profile, spec.preferred_chain) == (KeyType.EC_P256, False, None, None)


def test_internationalized_wildcards_keep_their_star() -> None:
    assert normalize_name("*.Bücher.test", allow_wildcard=True) == "*.xn--bcher-kva.test"
    assert normalize_name("*.xn--bcher-kva.test", allow_wildcard=True) == "*.xn--bcher-kva.test"


def test_idna_2008_not_2003_and_a_trailing_ideographic_stop() -> None:
    assert normalize_name("faß.de") == "xn--fa-hia.de", "IDNA 2003 (transitional) would give fass.de"
    assert normalize_name("bücher.test\u3002") == "xn--bcher-kva.test"


def test_every_a_label_is_checked_not_only_the_first() -> None:
    # xn--u-ccb decodes to "u" and a combining mark: not NFC, so no browser would send it.
    assert message(normalize_name, "www.xn--u-ccb.test") == (
        "'www.xn--u-ccb.test' is not a valid internationalized domain name (Label must be in Normalization "
        "Form C): check the spelling; names are converted by IDNA 2008 (UTS 46) as browsers do"
    )
    assert normalize_name("www.xn--bcher-kva.test") == "www.xn--bcher-kva.test"


@pytest.mark.parametrize(
    ("url", "exposed"),
    [
        ("https://ca.example/directory", False),
        ("http://ca.example/directory", True),
        ("http://10.0.0.1:14000/dir", True),
        ("http://127.0.0.1:14000/dir", False),
        ("http://[::1]:14000/dir", False),
        ("http://localhost:14000/dir", False),
        ("http://LOCALHOST./dir", False),
        ("http://pebble.localhost/dir", False),
        ("http://notlocalhost/dir", True),
        ("http:///dir", True),
    ],
)
def test_plain_http_is_flagged_unless_it_stays_on_this_host(url: str, exposed: bool) -> None:
    assert plain_http_off_loopback(url) is exposed


@pytest.mark.parametrize("seconds", [0, -1.0])
def test_the_order_timeout_must_be_positive(seconds: float) -> None:
    assert message(IssuerSpec, order_timeout_s=seconds) == (
        f"order timeout {seconds!r} is not a positive number of seconds"
    )


def test_a_short_order_timeout_is_allowed() -> None:
    assert IssuerSpec(order_timeout_s=0.5).order_timeout_s == 0.5
