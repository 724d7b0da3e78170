"""The proxy's environment contract (the seed's variables plus a few new ones), parsed into one value."""

from __future__ import annotations

import ipaddress
import os
import pwd
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from certkeeper.errors import ConfigError, ConfigErrors

T = TypeVar("T")

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_HOSTNAME = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$")
# Kubernetes service variables look like MYAPP_SERVICE_HOST; hostnames never contain "_" or are all caps.
_ENV_NAME = re.compile(r"^[A-Z][A-Z0-9]*_[A-Z0-9_]*$")
_SERVER_NAME = re.compile(r"^(\*\.)?[A-Za-z0-9_]([A-Za-z0-9_.-]*[A-Za-z0-9])?(\.\*)?$")
_LOG_PATH = re.compile(r"^/[A-Za-z0-9_./-]*$")


@dataclass(frozen=True)
class Upstream:
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


@dataclass(frozen=True)
class ProxySettings:
    enable_ssl: bool
    basic_auth: bool
    target: Upstream
    cert_service: Upstream | None
    server_names: tuple[str, ...]
    web_sockets: bool
    hsts: bool
    secrets_dir: Path
    http_port: int
    https_port: int
    listen_address: str | None
    run_dir: Path
    access_log: str
    nginx_bin: str
    worker_user: str | None
    poll_seconds: float
    # TLS_ALPN_SERVICE: where ALPN acme-tls/1 connections on the HTTPS port go (certkeeper's TLS-ALPN-01
    # responder); None: no stream front, the HTTPS server listens on the port itself.
    tls_alpn_service: Upstream | None = None
    stream_module: str | None = None  # load_module path when nginx's stream module is dynamic

    @property
    def htpasswd(self) -> Path:
        return self.secrets_dir / "htpasswd"


def _boolean(env: Mapping[str, str], name: str, default: bool) -> bool:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    if raw.lower() in _TRUE:
        return True
    if raw.lower() in _FALSE:
        return False
    raise ConfigError(f"{name}={raw!r} is not a boolean", f"set {name} to true or false")


def _port(name: str, raw: str) -> int:
    if not raw.isdigit() or not 1 <= int(raw) <= 65535:
        raise ConfigError(f"{name}={raw!r} is not a port number", f"set {name} to a number from 1 to 65535")
    return int(raw)


def _host(name: str, raw: str) -> str:
    bare = raw[1:-1] if raw.startswith("[") and raw.endswith("]") else raw
    try:
        return str(ipaddress.ip_address(bare))
    except ValueError:
        pass
    if not _HOSTNAME.match(raw) or len(raw) > 253:
        raise ConfigError(f"{name}={raw!r} is not a host name or IP address", f"set {name} to e.g. myapp or 10.0.0.7")
    return raw


def _indirect(env: Mapping[str, str], name: str) -> str | None:
    """The seed's *_ENV_NAME indirection: the value of the named variable, or the name itself as a literal.

    The literal fallback lets ``SERVICE_PORT_ENV_NAME=8080`` work (the original crashed on it); a name that
    looks like a variable but is unset is an error rather than a host called ``MYAPP_SERVICE_HOST``.
    """
    pointer = env.get(name, "").strip()
    if not pointer:
        return None
    value = env.get(pointer, "").strip()
    if value:
        return value
    if _ENV_NAME.match(pointer):
        raise ConfigError(
            f"{name}={pointer} names a variable that is not set",
            f"set {pointer} (Kubernetes does so for a Service created before the pod) or put a literal value in {name}",
        )
    return pointer


def _split_host_port(name: str, raw: str) -> tuple[str, int | None]:
    raw = raw.strip().removeprefix("http://").rstrip("/")
    if raw.startswith("["):
        host, sep, rest = raw.partition("]")
        host += "]"
        port = rest.removeprefix(":") if sep else ""
    elif raw.count(":") == 1:
        host, port = raw.split(":")
    else:
        host, port = raw, ""
    return _host(name, host), (_port(name, port) if port else None)


def _upstream(env: Mapping[str, str], name: str, host_name: str, port_name: str) -> Upstream | None:
    host: str | None = None
    port: int | None = None
    literal = env.get(name, "").strip()
    if literal:
        host, port = _split_host_port(name, literal)
    indirect_host = _indirect(env, host_name)
    if indirect_host is not None:
        host = _host(f"{host_name} -> {env[host_name].strip()}", indirect_host)
    indirect_port = _indirect(env, port_name)
    if indirect_port is not None:
        port = _port(f"{port_name} -> {env[port_name].strip()}", indirect_port)
    if host is None:
        if port is not None:
            raise ConfigError(f"{port_name} is set but no host is", f"set {name}=host:port or {host_name}")
        return None
    return Upstream(host, port or 80)


def _server_names(env: Mapping[str, str]) -> tuple[str, ...]:
    names = tuple(env.get("SERVER_NAME", "").split())
    for name in names:
        if not _SERVER_NAME.match(name):
            raise ConfigError(
                f"SERVER_NAME contains {name!r}, which is not a host name",
                "list host names separated by spaces, e.g. SERVER_NAME='example.com www.example.com'",
            )
    return names


def _directory(env: Mapping[str, str], name: str, default: str) -> Path:
    raw = env.get(name, "").strip() or default
    if not raw.startswith("/"):
        raise ConfigError(f"{name}={raw!r} is not an absolute path", f"set {name} to a path starting with /")
    return Path(raw)


def _nginx_bin(env: Mapping[str, str]) -> str:
    raw = env.get("NGINX_BIN", "").strip()
    found = shutil.which(raw) if raw else (shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin"))
    if not found:
        what = f"NGINX_BIN={raw!r} is not an executable" if raw else "nginx is not installed"
        raise ConfigError(what, "install the Debian package nginx-light, or set NGINX_BIN to nginx's path")
    return found


def _tls_alpn_service(env: Mapping[str, str]) -> Upstream | None:
    raw = env.get("TLS_ALPN_SERVICE", "").strip()
    if not raw:
        return None
    if ":" not in raw.strip("[]") or raw.endswith("]"):
        raise ConfigError(
            f"TLS_ALPN_SERVICE={raw!r} has no port", "give host:port of certkeeper's TLS-ALPN-01 responder"
        )
    host, port = _split_host_port("TLS_ALPN_SERVICE", raw)
    return Upstream(host, port or 443)


def _stream_module(nginx_bin: str) -> str | None:
    """nginx's stream module (``ssl_preread``): None if built in, its path if dynamic; ConfigError if absent."""
    try:
        built = subprocess.run([nginx_bin, "-V"], capture_output=True, text=True, timeout=10, check=False).stderr
    except (OSError, subprocess.TimeoutExpired) as error:
        raise ConfigError(f"cannot run {nginx_bin} -V ({error})") from None
    if "--with-stream_ssl_preread_module" not in built:
        raise ConfigError("TLS_ALPN_SERVICE needs nginx with ssl_preread", "use Debian's nginx-light")
    if "--with-stream=dynamic" not in built:
        return None
    found = re.search(r"--modules-path=(\S+)", built)
    path = Path(found.group(1) if found else "/usr/lib/nginx/modules") / "ngx_stream_module.so"
    if not path.is_file():
        raise ConfigError(
            f"TLS_ALPN_SERVICE needs nginx's stream module and {path} does not exist",
            "install the Debian package libnginx-mod-stream",
        )
    return str(path)


def _worker_user(env: Mapping[str, str]) -> str | None:
    # As root, nginx's workers drop to this user and must be able to read the certificate we hand them.
    if os.geteuid() != 0:
        return None
    user = env.get("NGINX_USER", "").strip() or "www-data"
    try:
        pwd.getpwnam(user)
    except KeyError:
        raise ConfigError(
            f"NGINX_USER={user!r} is not a user on this system", "set NGINX_USER to an existing user"
        ) from None
    return user


def _access_log(env: Mapping[str, str]) -> str:
    raw = env.get("ACCESS_LOG", "").strip() or "/dev/stdout"
    if raw != "off" and not _LOG_PATH.match(raw):
        raise ConfigError(f"ACCESS_LOG={raw!r} is not a file path", "set ACCESS_LOG to off or an absolute path")
    return raw


def _poll_seconds(env: Mapping[str, str]) -> float:
    raw = env.get("CERT_POLL_SECONDS", "").strip() or "0.5"
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.05 <= value <= 60:
        raise ConfigError(f"CERT_POLL_SECONDS={raw!r} is out of range", "set it between 0.05 and 60")
    return value


def load_settings(env: Mapping[str, str] | None = None) -> ProxySettings:
    """Parse the environment; raise ConfigErrors listing every problem found, one line each."""
    env = os.environ if env is None else env
    problems: list[ConfigError | str] = []

    def field(parse: Callable[[], T], fallback: T) -> T:
        try:
            return parse()
        except ConfigErrors as many:
            problems.extend(many.problems)
        except ConfigError as one:
            problems.append(one)
        return fallback

    enable_ssl = field(lambda: _boolean(env, "ENABLE_SSL", False), False)
    basic_auth = field(lambda: _boolean(env, "ENABLE_BASIC_AUTH", False), False)
    web_sockets = field(lambda: _boolean(env, "WEB_SOCKETS", False), False)
    hsts = field(lambda: _boolean(env, "HSTS", True), True)
    known = len(problems)
    target = field(lambda: _upstream(env, "TARGET_SERVICE", "SERVICE_HOST_ENV_NAME", "SERVICE_PORT_ENV_NAME"), None)
    if target is None and len(problems) == known:
        problems.append(
            ConfigError(
                "no backend to proxy to",
                "set TARGET_SERVICE=host:port (or SERVICE_HOST_ENV_NAME and SERVICE_PORT_ENV_NAME)",
            )
        )
    cert_service = field(
        lambda: _upstream(env, "CERT_SERVICE", "CERT_SERVICE_HOST_ENV_NAME", "CERT_SERVICE_PORT_ENV_NAME"), None
    )
    no_names: tuple[str, ...] = ()
    server_names = field(lambda: _server_names(env), no_names)
    http_port = field(lambda: _port("HTTP_PORT", env.get("HTTP_PORT", "").strip() or "80"), 80)
    https_port = field(lambda: _port("HTTPS_PORT", env.get("HTTPS_PORT", "").strip() or "443"), 443)
    if enable_ssl and http_port == https_port:
        problems.append(ConfigError(f"HTTP_PORT and HTTPS_PORT are both {http_port}", "give them different ports"))
    listen_raw = env.get("LISTEN_ADDRESS", "").strip()
    listen_address = field(lambda: _host("LISTEN_ADDRESS", listen_raw), None) if listen_raw else None
    secrets_dir = field(lambda: _directory(env, "SECRETS_DIR", "/etc/secrets"), Path("/etc/secrets"))
    run_dir = field(lambda: _directory(env, "RUN_DIR", "/run/certkeeper-proxy"), Path("/run/certkeeper-proxy"))
    access_log = field(lambda: _access_log(env), "off")
    nginx_bin = field(lambda: _nginx_bin(env), "nginx")
    worker_user = field(lambda: _worker_user(env), None)
    poll_seconds = field(lambda: _poll_seconds(env), 0.5)
    tls_alpn_service = field(lambda: _tls_alpn_service(env), None)
    stream_module = None
    if tls_alpn_service is not None:
        if not enable_ssl:
            problems.append(ConfigError("TLS_ALPN_SERVICE is set but ENABLE_SSL is off", "set ENABLE_SSL=true"))
        stream_module = field(lambda: _stream_module(nginx_bin), None)
    if basic_auth and not (secrets_dir / "htpasswd").is_file():
        problems.append(
            ConfigError(
                f"ENABLE_BASIC_AUTH is on but {secrets_dir / 'htpasswd'} does not exist",
                "add an htpasswd key to the mounted Secret, or set ENABLE_BASIC_AUTH=false",
            )
        )
    if problems:
        raise ConfigErrors(problems)
    assert target is not None
    return ProxySettings(
        enable_ssl=enable_ssl,
        basic_auth=basic_auth,
        target=target,
        cert_service=cert_service,
        server_names=server_names,
        web_sockets=web_sockets,
        hsts=hsts,
        secrets_dir=secrets_dir,
        http_port=http_port,
        https_port=https_port,
        listen_address=listen_address,
        run_dir=run_dir,
        access_log=access_log,
        nginx_bin=nginx_bin,
        worker_user=worker_user,
        poll_seconds=poll_seconds,
        tls_alpn_service=tls_alpn_service,
        stream_module=stream_module,
    )
