"""The seed's environment as ``certkeeper run`` reads it, and CRON_FREQUENCY's schedule (no cluster needed)."""

from __future__ import annotations

import datetime

import pytest

from certkeeper.errors import ConfigError, ConfigErrors
from certkeeper.kube.config import Workload, load_config
from certkeeper.kube.cron import Cron

UTC = datetime.UTC


def at(text: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(text).replace(tzinfo=UTC)


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 0 1 * *", "2026-11-27T10:00", "2026-12-01T00:00"),  # the seed's monthly cron
        ("*/15 * * * *", "2026-11-27T10:07", "2026-11-27T10:15"),
        ("30 3 * * mon", "2026-11-27T10:00", "2026-11-30T03:30"),  # 2026-11-27 is a Friday
        ("0 12 * * 7", "2026-11-27T10:00", "2026-11-29T12:00"),  # 7 is Sunday too
        ("0 0 13 * 5", "2026-11-27T10:00", "2026-12-04T00:00"),  # both day fields: either matches
        ("@daily", "2026-12-31T23:59", "2027-01-01T00:00"),
        ("0 0 29 2 *", "2026-11-27T10:00", "2028-02-29T00:00"),
        ("5-10/5 1,2 * jan-mar *", "2026-11-27T10:00", "2027-01-01T01:05"),
        ("0 0 * * *", "2026-11-27T00:00", "2026-11-28T00:00"),  # strictly after
    ],
)
def test_cron_next_time(expression: str, after: str, expected: str) -> None:
    assert Cron.parse(expression).next_after(at(after)) == at(expected)


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("0 0 * *", "4 fields"),
        ("60 * * * *", "outside 0-59"),
        ("* * * foo *", "not a number"),
        ("*/0 * * * *", "step"),
        ("5-1 * * * *", "backwards"),
    ],
)
def test_cron_bad_expressions_say_why(expression: str, says: str) -> None:
    with pytest.raises(ConfigError, match=says):
        Cron.parse(expression)


def test_seed_environment_is_read_like_the_original() -> None:
    config = load_config(
        {
            "EMAIL": "admin@example.com",
            "DOMAINS": "Example.com  foo.example.com example.com",
            "RC_NAMES": "nginx-ssl-proxy-api other",
            "DEPLOYMENTS": "web",
            "WORKLOADS": "sts/db daemonset/agent",
            "LETSENCRYPT_ENDPOINT": "https://acme-staging.api.letsencrypt.org/directory",
            "NAMESPACE": "prod",
        }
    )
    assert config.spec.names == ("example.com", "foo.example.com")
    assert config.secret_name == "certs-example.com"
    assert config.namespace == "prod"
    assert config.rc_names == ("nginx-ssl-proxy-api", "other")
    assert config.workloads == (
        Workload("Deployment", "web"),
        Workload("StatefulSet", "db"),
        Workload("DaemonSet", "agent"),
    )
    # The post's ACME v1 staging endpoint no longer exists: its v2 successor is used, and said so.
    assert config.issuer.directory_url == "https://acme-staging-v02.api.letsencrypt.org/directory"
    assert any("ACME v1" in note for note in config.notes)
    assert config.secret_type is None and config.cron is None


def test_a_plain_http_endpoint_is_warned_about_in_one_line() -> None:
    config = load_config(
        {"EMAIL": "a@example.com", "DOMAINS": "example.com", "LETSENCRYPT_ENDPOINT": "http://ca.internal/directory"}
    )
    (note,) = [n for n in config.notes if "LETSENCRYPT_ENDPOINT" in n]
    assert note.startswith("LETSENCRYPT_ENDPOINT http://ca.internal/directory is plain HTTP") and "https://" in note
    assert "\n" not in note


def test_namespace_defaults_to_the_pods_own_else_default() -> None:
    config = load_config({"EMAIL": "a@example.com", "DOMAINS": "example.com", "SECRET_NAME": "tls-web"})
    assert config.namespace == "default"  # no service account file outside a pod
    assert config.secret_name == "tls-web"


def test_missing_email_and_domains_are_both_reported() -> None:
    with pytest.raises(ConfigErrors) as raised:
        load_config({})
    assert [p.split(":")[0] for p in raised.value.problems] == ["DOMAINS is empty", "EMAIL is empty"]
