"""Gateway listeners into Certificates, without a cluster: what a Gateway user writes, what certkeeper makes."""

from __future__ import annotations

from typing import Any

from certkeeper.kube.gateway import PROBLEM_ANNOTATION, gateway_plan, project_gateway
from certkeeper.kube.issuers import parse_solvers, refuse_names
from certkeeper.kube.sources import Refusal, Target, certificate_target, project_certificate


def listener(
    name: str, hostname: str | None, *refs: dict[str, Any], protocol: str = "HTTPS", **tls: Any
) -> dict[str, Any]:
    found: dict[str, Any] = {"name": name, "protocol": protocol, "port": 443}
    if hostname is not None:
        found["hostname"] = hostname
    if refs or tls:
        found["tls"] = {**tls, "certificateRefs": list(refs)}
    return found


def gateway(annotations: dict[str, str], *listeners: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "Gateway",
        "metadata": {"name": "edge", "namespace": "shop", "uid": "u-1", "annotations": annotations},
        "spec": {"gatewayClassName": "any", "listeners": list(listeners)},
    }


def secret(name: str, **more: str) -> dict[str, Any]:
    return {"kind": "Secret", "name": name, **more}


def by_name(plan: Any) -> dict[str, dict[str, Any]]:
    return {body["metadata"]["name"]: body for body in plan.certificates}


def test_each_secret_gets_one_certificate_with_the_hostnames_of_its_listeners() -> None:
    plan = gateway_plan(
        project_gateway(
            gateway(
                {"certkeeper.io/issuer": "acme"},
                listener("http", "a.example.com", protocol="HTTP"),
                listener("a", "a.example.com", secret("a-tls")),
                listener("b", "b.example.com", secret("shared")),
                listener("c", "c.example.com", secret("shared", group="", namespace="shop")),
                listener("c-tls", "c.example.com", secret("shared"), protocol="TLS"),
            )
        )
    )
    assert plan.problems == ()
    certs = by_name(plan)
    assert set(certs) == {"a-tls", "shared"}
    assert certs["shared"]["spec"] == {
        "secretName": "shared",
        "dnsNames": ["b.example.com", "c.example.com"],
        "issuerRef": {"name": "acme", "kind": "Issuer"},
    }
    owner = certs["a-tls"]["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["uid"], owner["controller"]) == ("Gateway", "edge", "u-1", True)
    assert certs["a-tls"]["metadata"]["namespace"] == "shop"


def test_the_issuer_comes_from_certkeepers_annotation_or_cert_managers() -> None:
    listeners = [listener("a", "a.example.com", secret("a-tls"))]
    cases = {
        "certkeeper.io/issuer": ("Issuer", "x"),
        "certkeeper.io/cluster-issuer": ("ClusterIssuer", "x"),
        "cert-manager.io/issuer": ("Issuer", "x"),
        "cert-manager.io/cluster-issuer": ("ClusterIssuer", "x"),
    }
    for annotation, (kind, name) in cases.items():
        cert = gateway_plan(project_gateway(gateway({annotation: "x"}, *listeners))).certificates[0]
        assert cert["spec"]["issuerRef"] == {"name": name, "kind": kind}, annotation
    # certkeeper's own annotation wins over a leftover cert-manager one.
    both = {"cert-manager.io/cluster-issuer": "old", "certkeeper.io/issuer": "new"}
    cert = gateway_plan(project_gateway(gateway(both, *listeners))).certificates[0]
    assert cert["spec"]["issuerRef"] == {"name": "new", "kind": "Issuer"}


def test_a_gateway_without_annotation_asks_for_nothing() -> None:
    plan = gateway_plan(project_gateway(gateway({}, listener("a", "a.example.com", secret("a-tls")))))
    assert plan.certificates == () and plan.problems == ()


def test_passthrough_and_plain_listeners_are_not_certified() -> None:
    plan = gateway_plan(
        project_gateway(
            gateway(
                {"certkeeper.io/issuer": "acme"},
                listener("pass", "p.example.com", protocol="TLS", mode="Passthrough"),
                listener("tcp", "t.example.com", protocol="TCP"),
            )
        )
    )
    assert plan.certificates == () and plan.problems == ()


def test_listeners_that_cannot_be_served_are_reported_never_skipped() -> None:
    plan = gateway_plan(
        project_gateway(
            gateway(
                {"certkeeper.io/issuer": "acme"},
                listener("nohost", None, secret("nohost-tls")),
                listener("elsewhere", "e.example.com", secret("e-tls", namespace="other")),
                listener("notsecret", "n.example.com", {"group": "example.io", "kind": "Vault", "name": "v"}),
                listener("norefs", "r.example.com"),
                listener("wild", "*.example.com", secret("wild-tls")),
                listener("good", "g.example.com", secret("good-tls")),
            )
        )
    )
    text = "\n".join(plan.problems)
    assert len(plan.problems) == 4, text
    assert "listener nohost: no hostname" in text and "set listener.hostname" in text
    assert "Secret other/e-tls is in another namespace" in text
    assert "certificateRef Vault v is not a Secret" in text
    assert "listener norefs: HTTPS without tls.certificateRefs" in text
    certs = by_name(plan)
    # The nameless listener's Secret still gets a Certificate, which says why it is not issued.
    assert set(certs) == {"nohost-tls", "wild-tls", "good-tls"}
    nohost = certs["nohost-tls"]
    assert nohost["spec"]["dnsNames"] == []
    refused = certificate_target(project_certificate({**nohost, "metadata": {**nohost["metadata"], "uid": "c"}}))
    assert isinstance(refused, Refusal) and refused.reason == "ListenerNotServed"
    assert "listener nohost has no hostname" in refused.message
    wild = certificate_target(project_certificate(certs["wild-tls"]))
    # A wildcard listener is the issuer's to serve (DNS-01) or refuse, like any Certificate's wildcard.
    assert not isinstance(wild, Refusal)
    refused = refuse_names(parse_solvers({}), wild.spec.names, "Issuer shop/acme")
    assert refused is not None and refused.reason == "WildcardNeedsDNS01"
    assert (
        refuse_names(
            parse_solvers({"solvers": [{"dns01": {"rfc2136": {"nameserver": "ns:53"}}}]}), wild.spec.names, "x"
        )
        is None
    )
    good = certificate_target(project_certificate(certs["good-tls"]))
    assert isinstance(good, Target) and good.spec.names == ("g.example.com",)
    assert PROBLEM_ANNOTATION not in (certs["good-tls"]["metadata"].get("annotations") or {})


def test_a_nameless_listener_sharing_a_secret_leaves_the_named_ones_served() -> None:
    plan = gateway_plan(
        project_gateway(
            gateway(
                {"certkeeper.io/issuer": "acme"},
                listener("named", "a.example.com", secret("shared")),
                listener("nameless", None, secret("shared")),
            )
        )
    )
    (cert,) = plan.certificates
    assert cert["spec"]["dnsNames"] == ["a.example.com"]
    assert "annotations" not in cert["metadata"]
    assert len(plan.problems) == 1 and "listener nameless: no hostname" in plan.problems[0]
