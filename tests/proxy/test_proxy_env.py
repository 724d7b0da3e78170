"""Bad environment values: one clear line each (what is wrong, how to fix it), a non-zero exit, no nginx."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import pytest
from proxy_helpers import CERTKEEPER, StartProxy, free_port, http_get, run_certkeeper_proxy


def _run(world_dir: Path, env: dict[str, str]) -> tuple[int, list[str]]:
    base = {
        "TARGET_SERVICE": "127.0.0.1:9",
        "RUN_DIR": str(world_dir / "run"),
        "SECRETS_DIR": str(world_dir / "secrets"),
        "HTTP_PORT": str(free_port()),
        "HTTPS_PORT": str(free_port()),
        "LISTEN_ADDRESS": "127.0.0.1",
    }
    log = world_dir / "out.log"
    process = run_certkeeper_proxy({**base, **env}, log)
    try:
        code = process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()
        raise AssertionError("certkeeper proxy started despite a bad environment") from None
    return code, log.read_text().splitlines()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ENABLE_SSL": "yes please"}, "ENABLE_SSL='yes please' is not a boolean: set ENABLE_SSL to true or false"),
        ({"HTTP_PORT": "eighty"}, "HTTP_PORT='eighty' is not a port number"),
        ({"HTTPS_PORT": "70000"}, "HTTPS_PORT='70000' is not a port number"),
        ({"TARGET_SERVICE": ""}, "no backend to proxy to: set TARGET_SERVICE=host:port"),
        ({"TARGET_SERVICE": "my app:80"}, "TARGET_SERVICE='my app' is not a host name or IP address"),
        ({"SERVICE_PORT_ENV_NAME": "MYAPP_SERVICE_PORT"}, "SERVICE_PORT_ENV_NAME=MYAPP_SERVICE_PORT names a variable"),
        ({"CERT_SERVICE_HOST_ENV_NAME": "CERTS_SERVICE_HOST"}, "CERT_SERVICE_HOST_ENV_NAME=CERTS_SERVICE_HOST names"),
        ({"SERVER_NAME": "example.com;evil"}, "SERVER_NAME contains 'example.com;evil', which is not a host name"),
        ({"ENABLE_BASIC_AUTH": "true"}, "ENABLE_BASIC_AUTH is on but"),
        ({"ENABLE_SSL": "true", "HTTPS_PORT": "8080", "HTTP_PORT": "8080"}, "HTTP_PORT and HTTPS_PORT are both 8080"),
        ({"TARGET_SERVICE": "no-such-host.invalid:80"}, "nginx rejected the configuration: host not found in upstream"),
        ({"TLS_ALPN_SERVICE": "127.0.0.1:8443"}, "TLS_ALPN_SERVICE is set but ENABLE_SSL is off: set ENABLE_SSL"),
        ({"ENABLE_SSL": "true", "TLS_ALPN_SERVICE": "127.0.0.1"}, "TLS_ALPN_SERVICE='127.0.0.1' has no port: give"),
    ],
    ids=lambda v: next(iter(v)) if isinstance(v, dict) else "",
)
def test_bad_value_gives_one_clear_line_and_exit_2(world_dir: Path, env: dict[str, str], expected: str) -> None:
    code, lines = _run(world_dir, env)

    assert code == 2
    errors = [line for line in lines if line.startswith("certkeeper: error: ")]
    assert len(errors) == 1, lines
    assert expected in errors[0]
    assert ": " in errors[0].removeprefix("certkeeper: error: "), "the line should also say how to fix it"


def test_every_problem_is_reported_not_just_the_first(world_dir: Path) -> None:
    code, lines = _run(world_dir, {"ENABLE_SSL": "maybe", "HTTP_PORT": "x", "WEB_SOCKETS": "2"})

    assert code == 2
    assert len([line for line in lines if line.startswith("certkeeper: error: ")]) == 3


def test_unwritable_run_dir_is_a_clear_error(world_dir: Path) -> None:
    blocker = world_dir / "file"
    blocker.write_text("")
    code, lines = _run(world_dir, {"RUN_DIR": str(blocker / "run")})

    assert code == 2
    assert any("cannot use RUN_DIR=" in line and "set RUN_DIR to a writable directory" in line for line in lines)


def test_sigterm_stops_nginx_and_exits_cleanly(start_proxy: StartProxy) -> None:
    proxy = start_proxy()
    master = proxy.master_pid()
    assert http_get(proxy.http_port, "/")[0] == 200

    assert proxy.stop() == 0
    assert not Path(f"/proc/{master}").exists(), "nginx outlived certkeeper proxy"


@pytest.mark.parametrize("sig", [signal.SIGALRM, signal.SIGPWR, signal.SIGXCPU], ids=lambda s: s.name)
def test_a_signal_that_ends_certkeeper_stops_nginx_too(start_proxy: StartProxy, sig: signal.Signals) -> None:
    # Not forwarded to nginx, these would by default end certkeeper alone and leave nginx unsupervised.
    proxy = start_proxy()
    master = proxy.master_pid()

    proxy.process.send_signal(sig)

    assert proxy.process.wait(timeout=30) == 128 + sig
    assert not Path(f"/proc/{master}").exists(), "nginx outlived certkeeper proxy"
    assert f"got {sig.name}: stopping nginx" in proxy.log()


def test_nginx_failure_to_start_is_the_exit_status(start_proxy: StartProxy, world_dir: Path) -> None:
    running = start_proxy()
    # Same port as a running proxy: nginx -t passes, then nginx cannot bind and exits 1.
    process = run_certkeeper_proxy(
        {
            "TARGET_SERVICE": "127.0.0.1:9",
            "RUN_DIR": str(world_dir / "second"),
            "HTTP_PORT": str(running.http_port),
            "LISTEN_ADDRESS": "127.0.0.1",
        },
        world_dir / "second.log",
    )
    assert process.wait(timeout=30) == 1
    log = (world_dir / "second.log").read_text()
    assert "Address already in use" in log
    # certkeeper names the holder: the first proxy's nginx master.
    assert f"HTTP_PORT {running.http_port} is held by pid {running.master_pid()} (nginx: master process" in log


def test_print_config_shows_the_nginx_configuration_without_starting_it(world_dir: Path) -> None:
    result = subprocess.run(
        [CERTKEEPER, "proxy", "--print-config"],
        env={"PATH": "/usr/bin:/bin:/usr/sbin", "ENABLE_SSL": "true", "TARGET_SERVICE": "10.0.0.7:8080",
             "RUN_DIR": str(world_dir / "run"), "SERVER_NAME": "example.com"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip

    assert result.returncode == 0, result.stderr
    assert "server 10.0.0.7:8080;" in result.stdout
    assert "server_name example.com;" in result.stdout
    assert "ssl_protocols TLSv1.2 TLSv1.3;" in result.stdout
    assert not (world_dir / "run").exists()
