"""An Issuer's ``spec.acme.rehearsal`` as certkeeper reads it, without a cluster (the rehearsal itself runs
against the control plane and Pebble in tests/kube/test_kube_rehearsal.py)."""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import pytest

from certkeeper.kube.reconcile import IssuerConfig, issuer_config
from certkeeper.kube.rehearsals import rehearsal_secret_name
from certkeeper.kube.sources import IssuerObj, Refusal
from certkeeper.rehearsal import build_rehearsal
from certkeeper.spec import LETSENCRYPT, LETSENCRYPT_STAGING, IssuerSpec


def issuer(server: str, **acme: Any) -> IssuerObj:
    spec = {"acme": {"server": server, "privateKeySecretRef": {"name": "le-account"}, **acme}}
    return IssuerObj("ClusterIssuer", "", "le", 1, json.dumps(spec), "{}")


def test_lets_encrypt_production_is_rehearsed_at_staging_unless_told_otherwise(tmp_path: Path) -> None:
    config = issuer_config(issuer(LETSENCRYPT), "certkeeper", tmp_path)
    assert isinstance(config, IssuerConfig) and config.rehearsal == "auto"
    made = build_rehearsal(config.rehearsal, config.issuer, None)  # type: ignore[arg-type]
    assert made is not None and made.issuer.directory_url == LETSENCRYPT_STAGING
    off = issuer_config(issuer(LETSENCRYPT, rehearsal={"server": "off"}), "certkeeper", tmp_path)
    assert isinstance(off, IssuerConfig)
    assert build_rehearsal(off.rehearsal, off.issuer, None) is None  # type: ignore[arg-type]
    # Another CA is not rehearsed by default; told to, it is, with the bundle given for the rehearsal's CA.
    other = issuer_config(issuer("https://ca.example/dir"), "certkeeper", tmp_path)
    assert isinstance(other, IssuerConfig)
    assert build_rehearsal(other.rehearsal, other.issuer, None) is None  # type: ignore[arg-type]
    bundle = base64.b64encode(b"-----BEGIN CERTIFICATE-----\n").decode()
    declared = {"server": "https://staging.example/dir", "caBundle": bundle}
    told = issuer_config(issuer("https://ca.example/dir", rehearsal=declared), "certkeeper", tmp_path)
    assert isinstance(told, IssuerConfig) and told.rehearsal_ca_bundle is not None
    first = IssuerSpec("https://ca.example/dir", "a@example.com")
    made = build_rehearsal(told.rehearsal, first, None, ca_bundle=told.rehearsal_ca_bundle)  # type: ignore[arg-type]
    assert made is not None and made.issuer.ca_bundle == told.rehearsal_ca_bundle
    assert made.issuer.email == "a@example.com" and made.issuer.eab_kid is None


def test_the_rehearsal_account_has_its_own_secret() -> None:
    assert rehearsal_secret_name("le-account") == "le-account-rehearsal"
    long = "a" * 250
    assert len(rehearsal_secret_name(long)) <= 253 and rehearsal_secret_name(long).endswith("-rehearsal")


@pytest.mark.parametrize(
    ("rehearsal", "said"),
    [
        ({"server": "not a url"}, "acme.rehearsal.server: server 'not a url' is not a URL"),
        ({"server": LETSENCRYPT}, "acme.rehearsal.server names the server itself"),
        ({"server": "auto", "email": "x@example.com"}, "spec.acme.rehearsal.email not supported"),
        ("letsencrypt-staging", "acme.rehearsal is not an object"),
        ({"caBundle": "!!"}, "acme.rehearsal.caBundle is not base64"),
    ],
)
def test_a_wrong_rehearsal_is_refused_naming_the_field(tmp_path: Path, rehearsal: Any, said: str) -> None:
    refused = issuer_config(issuer(LETSENCRYPT, rehearsal=rehearsal), "certkeeper", tmp_path)
    assert isinstance(refused, Refusal), refused
    assert said in refused.message and "\n" not in refused.message, refused.message
