"""`certkeeper issue/renew --metrics-file`: node_exporter textfile output that follows the store."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

from cryptography import x509
from promtext import parse, promtool_check, value

from testbench.ari import AcmeFront
from testbench.command import CERTKEEPER, Env, Run, one_error_line

EXPIRY = "certkeeper_certificate_expiration_timestamp_seconds"
READY = "certkeeper_certificate_ready_status"
FAILURES = "certkeeper_certificate_consecutive_failures"
LAST_FAILURE = "certkeeper_certificate_last_failure_timestamp_seconds"


def not_after(cert: Path) -> float:
    return x509.load_pem_x509_certificate(cert.read_bytes()).not_valid_after_utc.timestamp()


def test_metrics_file_has_the_stored_expiry_then_counts_a_failure(
    ari_env: Env, ari: AcmeFront, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    env = ari_env
    prom = tmp_path / "certkeeper.prom"
    issued = certkeeper(env, "issue", "metrics.test", "--metrics-file", str(prom))
    assert issued.returncode == 0, issued.stderr
    text = prom.read_text()
    assert promtool_check(text).returncode == 0, promtool_check(text).stdout
    samples = parse(text)
    me = {"name": "metrics.test", "namespace": ""}
    assert value(samples, EXPIRY, **me) == not_after(store / "metrics.test" / "cert.pem")
    assert value(samples, READY, condition="True", **me) == 1.0
    assert value(samples, FAILURES, **me) == 0.0
    assert value(samples, LAST_FAILURE, **me) is None
    assert oct(prom.stat().st_mode & 0o777) == "0o644"  # node_exporter reads it as another user

    # The CA (behind a proxy) answers the new order with a 503 page: the renewal fails at the CA.
    ari.new_order_html_status = 503
    before = time.time()
    failed = certkeeper(env, "renew", "--force", "--metrics-file", str(prom))
    assert failed.returncode == 1, failed.stderr
    samples = parse(prom.read_text())
    assert value(samples, FAILURES, **me) == 1.0
    last = value(samples, LAST_FAILURE, **me)
    assert last is not None and before - 1 <= last <= time.time() + 1
    assert value(samples, READY, condition="False", **me) == 1.0
    # The certificate in use is still the first one.
    assert value(samples, EXPIRY, **me) == not_after(store / "metrics.test" / "cert.pem")


def test_metrics_file_is_replaced_by_rename_never_written_in_place(
    env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    prom = tmp_path / "node.prom"
    assert certkeeper(env, "issue", "atomic-metrics.test").returncode == 0
    prom.write_text("# an earlier run's file\n")
    trace = tmp_path / "trace"
    result = subprocess.run(
        ["strace", "-f", "-qq", "-e", "trace=openat,rename,renameat,renameat2", "-o", str(trace),
         CERTKEEPER, "renew", "--metrics-file", str(prom)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    calls = trace.read_text()
    writes = [line for line in calls.splitlines() if f'"{prom}"' in line and "openat(" in line]
    assert writes == [], writes  # the final name is never opened (a reader would see half a file)
    assert re.search(rf'rename(at2?)?\(.*"{re.escape(str(prom))}"', calls), calls
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".certkeeper-metrics")] == []
    assert value(parse(prom.read_text()), EXPIRY, name="atomic-metrics.test") is not None


def test_metrics_file_in_a_missing_directory_is_refused_before_ordering(
    env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    result = certkeeper(env, "issue", "nodir.test", "--metrics-file", str(tmp_path / "no" / "such" / "x.prom"))
    assert result.returncode == 2
    assert "does not exist" in one_error_line(result)
    assert not (store / "nodir.test").exists()
