"""``certkeeper controller`` refuses bad options and missing credentials with one line each, exit 2."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

CERTKEEPER = str(Path(sys.executable).with_name("certkeeper"))


def run(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("CERTKEEPER_") and k != "KUBECONFIG"}
    base["HOME"] = str(tmp_path)  # no ~/.kube/config
    return subprocess.run(
        [CERTKEEPER, "controller", *args], env={**base, **env}, capture_output=True, text=True, timeout=30
    )


def test_every_bad_option_is_named_on_its_own_line(tmp_path: Path) -> None:
    result = run(tmp_path, "--http-bind=nope", CERTKEEPER_DEFAULT_ISSUER="letsencrypt")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 2, result.stderr
    assert "bind address 'nope' is not HOST:PORT" in lines[0]
    assert "--default-issuer 'letsencrypt' is not KIND/NAME" in lines[1] and "ClusterIssuer/" in lines[1]


def test_no_credentials_is_one_line_that_says_what_to_set(tmp_path: Path) -> None:
    result = run(tmp_path, "--http-bind=127.0.0.1:0", KUBECONFIG=str(tmp_path / "missing"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "cannot load Kubernetes credentials from KUBECONFIG" in result.stderr and "Traceback" not in result.stderr


def test_a_bad_service_for_httproutes_is_one_line(tmp_path: Path) -> None:
    result = run(tmp_path, "--service=certkeeper-controller", "--http-bind=127.0.0.1:0")
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1, result.stderr
    assert "--service 'certkeeper-controller' is not NAME:PORT" in result.stderr
