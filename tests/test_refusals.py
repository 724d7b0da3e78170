"""Bad input is refused before any traffic to the CA; an unreachable CA is one line and a recorded failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from testbench.ari import AcmeFront
from testbench.command import Env, Run, one_error_line
from testbench.pebble import Pebble, free_port


def assert_only_failure_recorded(store: Path, lineage: str) -> None:
    """No key, certificate or account: only the failure, so the next runs back off (and the account lock file)."""
    written = sorted(p.relative_to(store).as_posix() for p in store.rglob("*") if p.is_file())
    assert written == ["accounts/.lock", f"{lineage}/state.json"], written
    state = json.loads((store / lineage / "state.json").read_text())
    assert state["failures"] == 1 and state["next_check"] > state["last_failure"]


@pytest.mark.parametrize(
    ("names", "says"),
    [
        (["bad..name"], "empty label"),
        (["--", "-a.test"], "invalid label '-a'"),
        (["*.a.test"], "wildcard"),
        (["01.2.3.4"], "numeric label"),
        ([], "no names given"),
        (["good.test", "bad..name"], "empty label"),
    ],
    ids=["double-dot", "leading-hyphen", "wildcard", "ipv4-leading-zero", "empty", "one-bad-among-good"],
)
def test_invalid_names_are_refused_before_any_order(
    names: list[str], says: str, ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run
) -> None:
    result = certkeeper(ari_env, "issue", *names)
    assert result.returncode == 2
    assert says in one_error_line(result)
    assert result.stdout == ""
    assert ari.recorded_requests() == [], "nothing may reach the CA for invalid names"
    assert not store.exists()


@pytest.mark.parametrize(
    ("content", "says"),
    [("good.test\n\n# comment\nbad..name other.test\n", "line 4"), ("# nothing but a comment\n", "lists no names")],
    ids=["bad-line", "no-names"],
)
def test_invalid_name_file_is_refused_before_any_order(
    content: str, says: str, ari: AcmeFront, ari_env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    names = tmp_path / "names.txt"
    names.write_text(content)
    result = certkeeper(ari_env, "issue", "--file", str(names))
    assert result.returncode == 2
    assert says in one_error_line(result)
    assert ari.recorded_requests() == []
    assert not store.exists()


def test_unknown_key_type_is_refused(ari: AcmeFront, ari_env: Env, certkeeper: Run) -> None:
    result = certkeeper(ari_env, "issue", "--key-type", "rsa-1024", "keys.test")
    assert result.returncode == 2
    assert "use one of ec-p256" in one_error_line(result)
    assert ari.recorded_requests() == []


@pytest.mark.parametrize("command", ["issue", "renew"])
def test_bad_bind_address_is_refused_by_issue_and_renew(
    command: str, ari: AcmeFront, ari_env: Env, certkeeper: Run
) -> None:
    args = [command, "--http-bind", "port-eighty"] + (["bind.test"] if command == "issue" else [])
    result = certkeeper(ari_env, *args)
    assert result.returncode == 2
    assert "'port-eighty' is not HOST:PORT" in one_error_line(result)
    assert ari.recorded_requests() == []


def test_unreachable_ca_is_one_clear_line_and_writes_nothing(ari_env: Env, store: Path, certkeeper: Run) -> None:
    closed = f"https://127.0.0.1:{free_port()}/dir"
    result = certkeeper({**ari_env, "CERTKEEPER_SERVER": closed}, "issue", "offline.test", "www.offline.test")
    assert result.returncode not in (0, 2)  # 2 is bad usage; this is a failure at run time
    line = one_error_line(result)
    assert line.startswith("certkeeper: error: offline.test www.offline.test: ")
    assert f"cannot reach the CA at {closed}" in line
    assert "check --server" in line
    assert result.stdout == ""
    assert_only_failure_recorded(store, "offline.test")


def test_untrusted_ca_tls_is_one_clear_line_and_writes_nothing(
    pebble: Pebble, env: Env, store: Path, certkeeper: Run, tmp_path: Path
) -> None:
    wrong_anchor = tmp_path / "not-the-anchor.pem"
    wrong_anchor.write_bytes(pebble.root_pem())  # Pebble's issuing root, not its HTTPS anchor
    result = certkeeper({**env, "CERTKEEPER_CA_BUNDLE": str(wrong_anchor)}, "issue", "tls.test")
    assert result.returncode not in (0, 2)
    line = one_error_line(result)
    assert "cannot verify the TLS certificate of the CA" in line and "--ca-bundle" in line
    assert_only_failure_recorded(store, "tls.test")
