"""``certkeeper proxy`` with METRICS_BIND: the generation served, its expiry and rotation time, refusals."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

from cryptography import x509
from promtext import Samples, parse, promtool_check, value
from proxy_helpers import LocalCA, StartProxy, free_port, served_serial, wait_for

from testbench.volumes import write_secret_volume

WITHIN = 10


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    check = promtool_check(text)
    assert check.returncode == 0, check.stdout + check.stderr
    return parse(text)


def not_after(chain_pem: bytes) -> float:
    return x509.load_pem_x509_certificate(chain_pem).not_valid_after_utc.timestamp()


def test_metrics_follow_rotations_and_count_refusals(start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA) -> None:
    first, second = ca.issue(), ca.issue()
    write_secret_volume(secrets_dir, {"proxycert": first.chain_pem, "proxykey": first.key_pem})
    port = free_port()
    started = time.time()
    proxy = start_proxy(ENABLE_SSL="true", METRICS_BIND=f"127.0.0.1:{port}")
    samples = scrape(port)
    assert value(samples, "certkeeper_proxy_certificate_generation") == 1.0
    assert value(samples, "certkeeper_proxy_certificate_expiration_timestamp_seconds") == not_after(first.chain_pem)
    installed = value(samples, "certkeeper_proxy_last_rotation_timestamp_seconds")
    assert installed is not None and started - 1 <= installed <= time.time()
    assert value(samples, "certkeeper_proxy_refused_pairs_total") == 0.0

    write_secret_volume(secrets_dir, {"proxycert": second.chain_pem, "proxykey": second.key_pem})
    wait_for(lambda: served_serial(proxy.https_port, ca.client_context()) == second.serial, WITHIN, "rotation")
    samples = scrape(port)
    assert value(samples, "certkeeper_proxy_certificate_generation") == 2.0
    assert value(samples, "certkeeper_proxy_certificate_expiration_timestamp_seconds") == not_after(second.chain_pem)
    rotated = value(samples, "certkeeper_proxy_last_rotation_timestamp_seconds")
    assert rotated is not None and rotated > installed

    write_secret_volume(secrets_dir, {"proxycert": first.chain_pem, "proxykey": second.key_pem})  # mismatched
    wait_for(lambda: value(scrape(port), "certkeeper_proxy_refused_pairs_total") == 1.0, WITHIN, "a refusal counted")
    assert value(scrape(port), "certkeeper_proxy_certificate_generation") == 2.0  # still the second
