"""Bad --rate-limits, --rehearsal and --fallback-server values: one line naming the option, before anything is sent."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from testbench.command import Run, one_error_line


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ("issue", "--rate-limits", "per-domain=lots", "a.example.com"),
            "--rate-limits: cannot read 'per-domain=lots'",
        ),
        (("status", "--rate-limits", "sometimes"), "--rate-limits: cannot read 'sometimes'"),
        (("issue", "--rehearsal", "not a url", "a.example.com"), "--rehearsal: server 'not a url' is not a URL"),
        (("issue", "--fallback-server", "ftp:x", "a.example.com"), "--fallback-server: server 'ftp:x' is not a URL"),
    ],
)
def test_a_bad_value_is_one_line_naming_the_option(
    certkeeper: Run, tmp_path: Path, args: tuple[str, ...], said: str
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CERTKEEPER_")}
    result = certkeeper({**env, "CERTKEEPER_STORE": str(tmp_path / "store")}, *args)
    assert result.returncode == 2
    assert said in one_error_line(result)
    assert not (tmp_path / "store").exists()  # nothing written
