"""Names, key types and servers as the user types them: normalized, or refused with one line."""

from __future__ import annotations

import pytest

from certkeeper.errors import ConfigError
from certkeeper.spec import LETSENCRYPT, LETSENCRYPT_STAGING, CertSpec, KeyType, normalize_names, resolve_server


def test_names_are_normalized_deduplicated_and_ordered() -> None:
    names = normalize_names(["Example.COM.", "www.example.com,api.example.com", "example.com"])
    assert names == ("example.com", "www.example.com", "api.example.com")


def test_ip_addresses_are_kept_in_canonical_form() -> None:
    assert normalize_names(["127.0.0.1", "[::1]", "2001:DB8:0::1"]) == ("127.0.0.1", "::1", "2001:db8::1")


def test_internationalized_names_become_punycode() -> None:
    assert normalize_names(["bücher.example"]) == ("xn--bcher-kva.example",)


@pytest.mark.parametrize(
    ("raw", "says"),
    [
        ("bad..name", "empty label"),
        (".lead.test", "empty label"),
        ("-a.test", "invalid label"),
        ("a-.test", "invalid label"),
        ("under_score.test", "invalid label"),
        ("*.a.test", "wildcard"),
        ("01.2.3.4", "numeric label"),  # not an address (leading zero), and not a name
        ("localhost", "single-label"),
        ("host.123", "numeric label"),
        ("a" * 64 + ".test", "invalid label"),
        (".".join(["a" * 60] * 5), "longer than 253"),
    ],
)
def test_invalid_names_are_refused_with_one_line(raw: str, says: str) -> None:
    with pytest.raises(ConfigError) as caught:
        normalize_names([raw])
    message = str(caught.value)
    assert says in message and "\n" not in message


def test_empty_and_oversized_lists_are_refused() -> None:
    with pytest.raises(ConfigError, match="no names given"):
        normalize_names([])
    with pytest.raises(ConfigError, match="no names given"):
        normalize_names([" ", ","])
    with pytest.raises(ConfigError, match="at most 100 names"):
        normalize_names([f"n{i}.test" for i in range(101)])


@pytest.mark.parametrize(
    ("text", "key_type"),
    [
        ("ec-p256", KeyType.EC_P256),
        ("ECDSA", KeyType.EC_P256),
        ("p384", KeyType.EC_P384),
        ("rsa", KeyType.RSA_2048),
        ("RSA_3072", KeyType.RSA_3072),
        ("rsa4096", KeyType.RSA_4096),
    ],
)
def test_key_type_spellings(text: str, key_type: KeyType) -> None:
    assert KeyType.parse(text) is key_type


def test_unknown_key_type_lists_the_choices() -> None:
    with pytest.raises(ConfigError, match="use one of ec-p256, ec-p384, rsa-2048, rsa-3072, rsa-4096"):
        KeyType.parse("rsa-1024")


def test_server_aliases_and_urls() -> None:
    assert resolve_server("letsencrypt") == LETSENCRYPT
    assert resolve_server("LetsEncrypt-Staging") == LETSENCRYPT_STAGING
    assert resolve_server("https://ca.example/dir") == "https://ca.example/dir"
    with pytest.raises(ConfigError, match="not a URL"):
        resolve_server("ca.example")


def test_lineage_is_the_first_name() -> None:
    assert CertSpec(("b.test", "a.test")).lineage == "b.test"
