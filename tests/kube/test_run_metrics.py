"""``certkeeper run`` serves /metrics and the status page on its HTTP-01 port (real control plane, Pebble)."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from lightkube import Client
from promtext import Samples, parse, promtool_check, value
from runkit import SECRET, certkeeper_run, get_secret, secret_bytes, seed_env, wait_for

from certkeeper.crypto import cert_info, split_pem_chain
from testbench.pebble import Pebble

EXPIRY = "certkeeper_certificate_expiration_timestamp_seconds"


def get(url: str) -> tuple[str, str]:
    with urllib.request.urlopen(url, timeout=10) as answer:
        return answer.headers["Content-Type"], answer.read().decode()


def scraped(base: str, metric: str, **labels: str) -> Samples | None:
    """The scrape once ``metric`` has a non-zero sample for ``labels`` (None before, or while not listening)."""
    try:
        samples = parse(get(base + "/metrics")[1])
    except urllib.error.URLError:
        return None
    return samples if value(samples, metric, **labels) else None


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_run_metrics_follow_the_secret_then_count_a_failure(
    kube_client: Client, namespace: str, kubeconfig: Path, pebble: Pebble, tmp_path: Path
) -> None:
    env = seed_env(pebble, namespace, kubeconfig, RC_NAMES="")
    base = f"http://{env['CERTKEEPER_HTTP_BIND']}"
    me = {"name": SECRET, "namespace": namespace}
    with certkeeper_run(env, tmp_path / "first.log") as run:
        secret = wait_for("the Secret", lambda: get_secret(kube_client, namespace), run=run)
        expiry = cert_info(split_pem_chain(secret_bytes(secret, "proxycert"))[0]).not_after.timestamp()
        samples = wait_for("the expiry in /metrics", lambda: scraped(base, EXPIRY, **me), run=run)
        assert value(samples, EXPIRY, **me) == expiry
        assert value(samples, "certkeeper_certificate_ready_status", condition="True", **me) == 1.0
        assert (value(samples, "certkeeper_certificate_checks_total", verdict="ready") or 0) >= 1
        # The ACME client's requests: the order placed (201 from newOrder), each with its duration.
        orders = value(samples, "certkeeper_acme_client_request_duration_seconds_count", endpoint="newOrder",
                       method="POST", status="201")  # fmt: skip
        assert orders is not None and orders >= 1
        assert value(samples, "certkeeper_acme_client_request_duration_seconds_count", endpoint="directory",
                     status="200") is not None  # fmt: skip
        content_type, text = get(base + "/metrics")
        assert content_type == "text/plain; version=0.0.4; charset=utf-8"
        check = promtool_check(text)
        assert check.returncode == 0, check.stdout + check.stderr
        content_type, page = get(base + "/")
        assert content_type.startswith("text/html") and f"{namespace}/{SECRET}" in page and "PRIVATE KEY" not in page
        assert run.stop() == 0

    # The CA is down (and a name added, so a certificate is due): the failure is counted and timed.
    down = seed_env(pebble, namespace, kubeconfig, RC_NAMES="", DOMAINS="example.com foo.example.com bar.example.com",
                    LETSENCRYPT_ENDPOINT=f"https://127.0.0.1:{closed_port()}/dir")  # fmt: skip
    before = time.time()
    with certkeeper_run(down, tmp_path / "second.log") as run:
        failures = "certkeeper_certificate_consecutive_failures"
        samples = wait_for("a failure in /metrics", lambda: scraped(base, failures, **me), run=run)
        assert value(samples, failures, **me) == 1.0
        last = value(samples, "certkeeper_certificate_last_failure_timestamp_seconds", **me)
        assert last is not None and before <= last <= time.time()
        assert value(samples, "certkeeper_certificate_ready_status", condition="False", **me) == 1.0
        page = get(base + "/")[1]
        assert "cannot" in page or "could not" in page or "connect" in page.lower()
        assert run.stop() == 0
