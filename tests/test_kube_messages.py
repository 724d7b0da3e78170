"""One-line messages of ``certkeeper run`` / ``certkeeper controller`` that need no cluster to check."""

from __future__ import annotations

import logging
import re

import httpx2
import pytest
from lightkube.core.exceptions import ApiError

from certkeeper.errors import ConfigError, ConfigErrors
from certkeeper.kube.api import translate
from certkeeper.kube.command import setup_logging
from certkeeper.kube.config import load_config
from certkeeper.kube.controller import api_wait_message
from certkeeper.kube.cron import Cron
from certkeeper.kube.secret_store import SecretStore

SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
FORBIDDEN = (
    'secrets "certs-example.com" is forbidden: User "system:serviceaccount:web:certkeeper" cannot get '
    'resource "secrets" in API group "" in the namespace "web"'
)


def api_error(code: int, message: str) -> ApiError:
    body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
    return ApiError(response=httpx2.Response(code, json=body, request=httpx2.Request("GET", "https://api/x")))


def test_a_403_names_the_verb_the_resource_and_the_rule_to_add() -> None:
    error = translate("read Secret web/certs-example.com", api_error(403, FORBIDDEN))
    text = str(error)
    assert "\n" not in text
    assert 'add verbs: ["get"] for resources: ["secrets"] (apiGroups: [""])' in text, text
    assert "deploy/certkeeper/rbac.yaml" in text, text


def test_a_403_at_start_is_not_reported_as_an_unreachable_api() -> None:
    forbidden = api_wait_message("https://10.0.0.1", translate("read Secret web/x", api_error(403, FORBIDDEN)), 2, 3)
    assert "cannot reach" not in forbidden and 'verbs: ["get"]' in forbidden, forbidden
    assert "retrying in 2 s (attempt 3)" in forbidden
    down = api_wait_message("https://10.0.0.1", translate("read Secret web/x", httpx2.ConnectError("refused")), 1, 1)
    assert down.startswith("cannot reach the Kubernetes API at https://10.0.0.1"), down


def test_cron_field_count_in_good_english() -> None:
    with pytest.raises(ConfigError) as one:
        Cron.parse("5")
    assert "has 1 field, not 5" in str(one.value)
    with pytest.raises(ConfigError) as three:
        Cron.parse("5 4 3")
    assert "has 3 fields, not 5" in str(three.value)


# A 246-character first domain: certs-<it> (252) fits, <that>-acme-account cut at 253 ended in "-".
LONG = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 50]) + ".com"


def env(domains: str, **more: str) -> dict[str, str]:
    return {"EMAIL": "ops@example.com", "DOMAINS": domains, "NAMESPACE": "web", "RC_NAMES": "web", **more}


def test_a_long_first_domain_gives_valid_companion_secret_names() -> None:
    assert len(LONG) == 246
    config = load_config(env(LONG))
    assert config.secret_name == f"certs-{LONG}"
    store = SecretStore(None, "web", config.secret_name)  # type: ignore[arg-type]
    names = {config.account_secret_name, store.account_secret_name, store.order_secret_name}
    assert len(names) == 2  # the store and the config agree on the account Secret
    for name in names:
        assert len(name) <= 253 and SUBDOMAIN.match(name), name
    assert config.account_secret_name.endswith("-acme-account") and store.order_secret_name.endswith("-order")
    # Stable across restarts (the same account Secret is found again), distinct for another domain.
    assert load_config(env(LONG)).account_secret_name == config.account_secret_name
    other = load_config(env(LONG.replace("d" * 50, "e" * 50))).account_secret_name
    assert other != config.account_secret_name
    # Short names are unchanged (existing account Secrets are still found).
    assert load_config(env("example.com")).account_secret_name == "certs-example.com-acme-account"


def test_a_secret_name_that_cannot_exist_is_refused_at_start_naming_secret_name() -> None:
    longest = ".".join(["a" * 63, "b" * 63, "c" * 63, "d" * 57]) + ".com"
    with pytest.raises(ConfigErrors) as refused:
        load_config(env(longest))
    (line,) = refused.value.problems
    assert "259 characters" in line and "set SECRET_NAME" in line, line
    assert load_config(env(longest, SECRET_NAME="certs-long")).secret_name == "certs-long"


LIBRARIES = ("httpx2", "httpcore2.http11", "httpcore2.connection", "hpack.hpack", "lightkube", "urllib3", "acme")


@pytest.fixture
def restore_logging() -> object:
    saved = {name: logging.getLogger(name).level for name in (*LIBRARIES, "", "certkeeper")}
    handlers = logging.getLogger().handlers[:]
    yield None
    for name, level in saved.items():
        logging.getLogger(name).setLevel(level)
    logging.getLogger().handlers[:] = handlers


def test_one_v_shows_certkeeper_debug_but_not_the_http_clients(restore_logging: object) -> None:
    setup_logging("text", 1)
    assert logging.getLogger("certkeeper.run").isEnabledFor(logging.DEBUG)
    loud = [name for name in LIBRARIES if logging.getLogger(name).isEnabledFor(logging.DEBUG)]
    assert loud == []
    assert not logging.getLogger("httpx2").isEnabledFor(logging.INFO)  # "HTTP Request: GET ..." per call
    setup_logging("text", 2)
    assert all(logging.getLogger(name).isEnabledFor(logging.DEBUG) for name in LIBRARIES)
    setup_logging("text", 0)
    assert not logging.getLogger("certkeeper.run").isEnabledFor(logging.DEBUG)
    assert logging.getLogger("certkeeper.run").isEnabledFor(logging.INFO)
