"""An Issuer's acme.solvers (cert-manager's shape) read into certkeeper's solver configuration: what a user
writes, what is refused with which line, and that no Secret value is ever recorded with a certificate."""

from __future__ import annotations

import base64

import pytest

from certkeeper.errors import ConfigError
from certkeeper.kube.issuers import parse_solvers, refuse_names, solver_config
from certkeeper.solvers.config import SolverSetup

SECRETS = {
    ("ns", "tsig"): {"tsig-secret-key": base64.b64encode(b"c2VjcmV0LWtleQ==").decode()},
    ("ns", "cloudflare"): {"auth_token": base64.b64encode(b"token-value").decode()},
}


def read(namespace: str, name: str) -> dict[str, str] | None:
    return SECRETS.get((namespace, name))


RFC2136 = {"nameserver": "192.0.2.53:53", "tsigKeyName": "k", "tsigAlgorithm": "HMACSHA512",
           "tsigSecretSecretRef": {"name": "tsig"}}  # fmt: skip
LEXICON = {"provider": "cloudflare", "nameserver": "192.0.2.1:53", "credentialsSecretRef": {"name": "cloudflare"}}


def test_cert_manager_rfc2136_and_certkeepers_lexicon_become_solver_config_without_recording_secrets() -> None:
    declared = parse_solvers(
        {
            "solvers": [
                {"http01": {}},
                {"selector": {"dnsZones": ["Example.COM"]}, "dns01": {"rfc2136": RFC2136}},
                {"selector": {"dnsNames": ["shop.example.net"]}, "dns01": {"lexicon": LEXICON}},
            ]
        }
    )
    config = solver_config(declared, "ns", read, "0.0.0.0:8443")
    rfc2136 = config[1]["dns01"]["rfc2136"]
    assert rfc2136["tsigAlgorithm"] == "hmac-sha512" and rfc2136["tsigSecret"] == "c2VjcmV0LWtleQ=="
    assert config[1]["selector"] == {"dnsZones": ["example.com"]}
    assert config[2]["dns01"]["lexicon"]["options"] == {"auth_token": "token-value"}
    recorded = repr(SolverSetup(tuple(config)).recorded())
    assert "c2VjcmV0LWtleQ" not in recorded and "token-value" not in recorded
    assert refuse_names(declared, ["*.example.com", "example.com", "www.other.org"], "Issuer x") is None
    refusal = refuse_names(declared, ["*.example.net"], "Issuer x")
    assert refusal is not None and refusal.reason == "WildcardNeedsDNS01"


@pytest.mark.parametrize(
    ("solvers", "message"),
    [
        (
            [{"dns01": {"route53": {}}}],
            "dns01 route53 is not supported: use dns01.rfc2136 or dns01.lexicon",
        ),
        ([{"http01": {"ingress": {"class": "nginx"}}}], "solvers[0]: http01.ingress is not supported"),
        ([{"selector": {"matchLabels": {"a": "b"}}, "http01": {}}], "selector.matchLabels is not supported"),
        ([{"dns01": {"rfc2136": {"nameserver": "ns:53", "tsigAlgorithm": "HMACSHA3"}}}], "tsigAlgorithm 'HMACSHA3'"),
        ([{"dns01": {"rfc2136": {"nameserver": "ns:53", "tsigKeyName": "k"}}}], "give both tsigKeyName and"),
        ([{"dns01": {"lexicon": {"nameserver": "ns:53"}}}], "solvers[0].dns01.lexicon.provider is empty"),
    ],
)
def test_a_solver_certkeeper_cannot_use_is_refused_in_one_line(solvers: list[object], message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_solvers({"solvers": solvers})
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_missing_tsig_secret_key_says_which_secret_and_key() -> None:
    wrong_key = {**RFC2136, "tsigSecretSecretRef": {"name": "tsig", "key": "other"}}
    declared = parse_solvers({"solvers": [{"dns01": {"rfc2136": wrong_key}}]})
    with pytest.raises(ConfigError, match="Secret ns/tsig has no key 'other'"):
        solver_config(declared, "ns", read, "0.0.0.0:8443")
