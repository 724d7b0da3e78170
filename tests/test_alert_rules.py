"""deploy/monitoring: the PrometheusRule's alerts pass promtool's checks and its unit tests, and use only
metrics certkeeper exposes."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from certkeeper.observe.prom import CERT_FAMILIES, RateLimitCollector

ROOT = Path(__file__).resolve().parent.parent
MONITORING = ROOT / "deploy" / "monitoring"


def rules_file(tmp_path: Path) -> Path:
    rule = yaml.safe_load((MONITORING / "prometheusrule.yaml").read_text())
    assert rule["kind"] == "PrometheusRule"
    path = tmp_path / "rules.yaml"
    path.write_text(yaml.safe_dump(rule["spec"]))
    shutil.copy(MONITORING / "rules-test.yaml", tmp_path / "rules-test.yaml")
    return path


def promtool_test(tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """The alert rules' unit tests (rules-test.yaml beside the rules in ``tmp_path``)."""
    return subprocess.run(["promtool", "test", "rules", "rules-test.yaml"], cwd=tmp_path, capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_rules_pass_promtool_check_and_unit_tests(tmp_path: Path) -> None:
    rules = rules_file(tmp_path)
    check = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr
    assert "5 rules found" in check.stdout
    tested = promtool_test(tmp_path)
    assert tested.returncode == 0, tested.stdout + tested.stderr


def test_a_broken_expectation_fails_the_unit_tests(tmp_path: Path) -> None:
    """The unit tests can fail: with the 7-day threshold at 5 days, the expiry test does."""
    rules = rules_file(tmp_path)
    rules.write_text(rules.read_text().replace("7 * 86400", "5 * 86400"))
    tested = promtool_test(tmp_path)
    assert tested.returncode != 0
    assert "CertkeeperCertificateExpiresSoon" in tested.stdout + tested.stderr


def test_rules_and_dashboard_use_only_exposed_metrics() -> None:
    exposed = (
        {name for name, _, _ in CERT_FAMILIES}
        | {
            "certkeeper_certificate_checks_total",
            "certkeeper_controller_leader",
            "certkeeper_controller_queue_depth",
            "certkeeper_controller_reconciles_total",
            "certkeeper_controller_watch_relists_total",
            "certkeeper_controller_orders_total",
            "certkeeper_textfile_timestamp_seconds",
        }
        | {name for name, _ in RateLimitCollector.FAMILIES}
    )
    for path in (MONITORING / "prometheusrule.yaml", MONITORING / "grafana-dashboard.json"):
        used = set(re.findall(r"certkeeper_[a-z_]+", path.read_text()))
        assert used and used <= exposed, f"{path.name}: {sorted(used - exposed)}"


def test_dashboard_queries_parse(tmp_path: Path) -> None:
    """Every panel's PromQL, given to promtool as recording rules: a typo fails the check."""
    dashboard = json.loads((MONITORING / "grafana-dashboard.json").read_text())
    exprs = [t["expr"] for panel in dashboard["panels"] for t in panel["targets"]]
    assert len(exprs) >= 8
    rules = {"groups": [{"name": "dashboard", "rules": [{"record": f"dashboard:q{i}", "expr": e}
                                                        for i, e in enumerate(exprs)]}]}  # fmt: skip
    path = tmp_path / "dashboard.yaml"
    path.write_text(yaml.safe_dump(rules))
    check = subprocess.run(["promtool", "check", "rules", str(path)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stdout + check.stderr


def test_headroom_alert_fires_below_ten_percent_only(tmp_path: Path) -> None:
    """The unit test can fail: at 12 % the alert would fire at 5 of 50 left, where the test expects none."""
    rules = rules_file(tmp_path)
    rules.write_text(rules.read_text().replace("0.1 * certkeeper_ratelimit_limit", "0.12 * certkeeper_ratelimit_limit"))
    tested = promtool_test(tmp_path)
    assert tested.returncode != 0
    assert "CertkeeperRateLimitHeadroomLow" in tested.stdout + tested.stderr
