"""The Issuer's ``http01.gatewayHTTPRoute`` solver as certkeeper reads it, without a cluster."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from certkeeper.kube.reconcile import IssuerConfig, issuer_config
from certkeeper.kube.sources import IssuerObj, Refusal
from certkeeper.solvers.httproute import RouteKeeper, route_name


def issuer(http01: dict[str, Any], kind: str = "Issuer") -> IssuerObj:
    spec = {"acme": {"server": "https://ca.example/dir", "solvers": [{"http01": http01}]}}
    return IssuerObj(kind, "shop" if kind == "Issuer" else "", "acme", 1, json.dumps(spec), "{}")


def test_parent_refs_default_to_the_issuers_namespace(tmp_path: Path) -> None:
    config = issuer_config(issuer({"gatewayHTTPRoute": {"parentRefs": [{"name": "edge", "sectionName": "http"}]}}),
                           "certkeeper", tmp_path)  # fmt: skip
    assert isinstance(config, IssuerConfig)
    route = RouteKeeper(None, "certkeeper", "certkeeper-controller", 80).body("T" * 43, config.route_parents)  # type: ignore[arg-type]
    assert route["spec"]["parentRefs"] == [{"name": "edge", "namespace": "shop", "sectionName": "http"}]
    rule = route["spec"]["rules"][0]
    assert rule["matches"] == [{"path": {"type": "Exact", "value": "/.well-known/acme-challenge/" + "T" * 43}}]
    assert rule["backendRefs"] == [{"name": "certkeeper-controller", "port": 80}]
    assert route.metadata.namespace == "certkeeper"
    assert route.metadata.labels["certkeeper.io/role"] == "http01-route"
    # Object names must be lower case: the token is not, its digest is.
    assert route.metadata.name == route_name("T" * 43) and route.metadata.name.islower()


def test_plain_http01_uses_no_routes(tmp_path: Path) -> None:
    config = issuer_config(issuer({}), "certkeeper", tmp_path)
    assert isinstance(config, IssuerConfig) and config.route_parents == ""


def test_bad_gateway_solvers_are_refused_with_what_to_fix(tmp_path: Path) -> None:
    cases = [
        (issuer({"ingress": {"class": "nginx"}}), "http01.ingress is not supported"),
        (issuer({"gatewayHTTPRoute": {}}), "parentRefs is empty"),
        (issuer({"gatewayHTTPRoute": {"parentRefs": [{"sectionName": "http"}]}}), "has no name"),
        (issuer({"gatewayHTTPRoute": {"parentRefs": [{"name": "edge", "hostname": "x"}]}}), "hostname is not a"),
        (issuer({"gatewayHTTPRoute": {"parentRefs": [{"name": "edge"}]}}, kind="ClusterIssuer"),
         "a ClusterIssuer must name the Gateway's namespace"),
    ]  # fmt: skip
    for obj, text in cases:
        refused = issuer_config(obj, "certkeeper", tmp_path)
        assert isinstance(refused, Refusal) and refused.reason == "UnsupportedSolver", obj
        assert text in refused.message, refused.message
        assert "\n" not in refused.message
