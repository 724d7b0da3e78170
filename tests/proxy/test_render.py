"""The nginx configuration the proxy renders: accepted by the real ``nginx -t`` in every mode, and
carrying the directives each setting promises (TLS policy, HSTS, redirects, auth, WebSockets).

Fast and in process (nginx -t only), so mutation testing (``make mutate``) runs it per mutant.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from certkeeper.kube.secret_store import FFDHE2048_PEM
from certkeeper.proxy.nginx import Nginx
from certkeeper.proxy.render import HSTS_MAX_AGE, MOZILLA_INTERMEDIATE_CIPHERS, NO_CERT_BODY, RunPaths, render
from certkeeper.proxy.settings import ProxySettings, load_settings


def settings(tmp_path: Path, **env: str) -> ProxySettings:
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    (secrets / "htpasswd").write_text("user:$apr1$abc$def\n")
    base = {"TARGET_SERVICE": "127.0.0.1:9", "RUN_DIR": str(tmp_path / "run"), "SECRETS_DIR": str(secrets)}
    return load_settings({**base, **env})


def rendered(
    tmp_path: Path, chosen: ProxySettings, *, has_cert: bool, dhparam: bool = False, front: bool = False
) -> str:
    """Render, then have nginx itself check the result (nginx -t fails the test with its complaint)."""
    paths = RunPaths(chosen.run_dir)
    for folder in (paths.root, paths.temp, paths.live / "current"):
        folder.mkdir(parents=True, exist_ok=True)
    paths.dhparam.write_bytes(FFDHE2048_PEM)
    text = render(chosen, paths, has_cert=has_cert, dhparam=dhparam, front=front)
    paths.conf.write_text(text)
    Nginx(chosen.nginx_bin, paths).check()
    return text


def lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines()]


@pytest.mark.parametrize("has_cert", [True, False])
@pytest.mark.parametrize(
    "env",
    [
        {},
        {"ENABLE_SSL": "true"},
        {"ENABLE_SSL": "true", "ENABLE_BASIC_AUTH": "true", "WEB_SOCKETS": "true", "CERT_SERVICE": "127.0.0.1:8089"},
        {"ENABLE_SSL": "true", "HSTS": "false", "LISTEN_ADDRESS": "::1", "SERVER_NAME": "a.test b.test"},
        {"LISTEN_ADDRESS": "127.0.0.1", "HTTP_PORT": "8080", "HTTPS_PORT": "8443", "ENABLE_SSL": "on"},
    ],
    ids=["plain", "ssl", "everything", "ipv6-no-hsts", "ports"],
)
def test_every_mode_renders_a_configuration_nginx_accepts(tmp_path: Path, env: dict[str, str], has_cert: bool) -> None:
    chosen = settings(tmp_path, **env)
    text = rendered(tmp_path, chosen, has_cert=has_cert, dhparam=has_cert)
    assert text.startswith("# Rendered by certkeeper proxy at every start; edits are overwritten.\n")
    assert f"pid {chosen.run_dir / 'nginx.pid'};" in lines(text)
    for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        assert f"{kind}_temp_path {chosen.run_dir / 'tmp'}/{kind};" in lines(text)


def test_tls_follows_the_mozilla_intermediate_policy(tmp_path: Path) -> None:
    text = lines(rendered(tmp_path, settings(tmp_path, ENABLE_SSL="true"), has_cert=True, dhparam=True))
    for directive in (
        "listen 443 ssl http2 default_server;",
        "ssl_protocols TLSv1.2 TLSv1.3;",
        f"ssl_ciphers {MOZILLA_INTERMEDIATE_CIPHERS};",
        "ssl_ecdh_curve X25519:prime256v1:secp384r1;",
        "ssl_prefer_server_ciphers off;",
        "ssl_session_tickets off;",
        "ssl_session_cache shared:certkeeper:10m;",
        "ssl_session_timeout 1d;",
        "ssl_stapling off;",
        f"ssl_dhparam {tmp_path / 'run' / 'dhparam.pem'};",
        f'add_header Strict-Transport-Security "max-age={HSTS_MAX_AGE}" always;',
        "ssl_certificate $certkeeper_generation/cert.pem;",
        "ssl_certificate_key $certkeeper_generation/key.pem;",
        f"root {tmp_path / 'run' / 'live' / 'current'};",
        "return 301 https://$host$request_uri;",
        "listen 80 default_server;",
        "server_name _;",
    ):
        assert directive in text, directive
    assert HSTS_MAX_AGE == 2 * 365 * 24 * 3600, "two years, as the HSTS preload list asks"
    assert MOZILLA_INTERMEDIATE_CIPHERS.count(":") == 8 and "CBC" not in MOZILLA_INTERMEDIATE_CIPHERS


def test_choices_change_what_is_rendered(tmp_path: Path) -> None:
    chosen = settings(
        tmp_path,
        ENABLE_SSL="true",
        HSTS="false",
        LISTEN_ADDRESS="::1",
        HTTP_PORT="8080",
        HTTPS_PORT="8443",
        SERVER_NAME="a.test b.test",
    )
    text = lines(rendered(tmp_path, chosen, has_cert=True))
    assert "listen [::1]:8443 ssl http2 default_server;" in text
    assert "listen [::1]:8080 default_server;" in text
    assert "return 301 https://$host:8443$request_uri;" in text
    assert "server_name a.test b.test;" in text
    assert not any("Strict-Transport-Security" in line or "ssl_dhparam" in line for line in text)
    v4 = lines(rendered(tmp_path, settings(tmp_path, LISTEN_ADDRESS="127.0.0.1", HTTP_PORT="8080"), has_cert=False))
    assert "listen 127.0.0.1:8080 default_server;" in v4


def test_before_the_first_certificate_http_says_so(tmp_path: Path) -> None:
    text = rendered(tmp_path, settings(tmp_path, ENABLE_SSL="true"), has_cert=False)
    assert "ssl" not in text.replace("ENABLE_SSL", "")
    assert "add_header Retry-After 30 always;" in lines(text)
    assert f'return 503 "{NO_CERT_BODY}";' in lines(text)
    assert NO_CERT_BODY == "certkeeper proxy: no certificate yet; HTTPS starts as soon as one is issued\\n"


def test_plain_http_proxies_and_never_redirects(tmp_path: Path) -> None:
    text = rendered(tmp_path, settings(tmp_path), has_cert=True)
    assert "proxy_pass http://certkeeper_backend;" in lines(text)
    assert "return 301" not in text and "listen 443" not in text and "return 503" not in text


def test_backend_and_proxy_headers(tmp_path: Path) -> None:
    text = lines(rendered(tmp_path, settings(tmp_path, TARGET_SERVICE="127.0.0.1:9000"), has_cert=False))
    for directive in (
        "server 127.0.0.1:9000;",
        "keepalive 32;",
        "proxy_http_version 1.1;",
        'proxy_set_header Connection "";',
        "proxy_set_header Host $host;",
        "proxy_set_header X-Real-IP $remote_addr;",
        "proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;",
        "proxy_set_header X-Forwarded-Proto $scheme;",
        "proxy_set_header X-Forwarded-Host $host;",
        "proxy_read_timeout 90;",
        "client_max_body_size 20M;",
        "server_tokens off;",
        "worker_connections 4096;",
        "daemon off;",
        "error_log stderr notice;",
        "access_log /dev/stdout;",
        "default $realpath_root;",
    ):
        assert directive in text, directive
    assert not any("acme-challenge" in line or "certkeeper_certs" in line for line in text)


def test_auth_websockets_and_challenges(tmp_path: Path) -> None:
    chosen = settings(
        tmp_path, ENABLE_SSL="true", ENABLE_BASIC_AUTH="true", WEB_SOCKETS="true", CERT_SERVICE="127.0.0.1:8089"
    )
    text = rendered(tmp_path, chosen, has_cert=True)
    flat = lines(text)
    assert flat.count('auth_basic "Restricted";') == 1, "auth guards the HTTPS backend only"
    assert f"auth_basic_user_file {chosen.secrets_dir / 'htpasswd'};" in flat
    assert "map $http_upgrade $connection_upgrade {" in flat and "default upgrade;" in flat and '"" "";' in flat
    assert "proxy_set_header Upgrade $http_upgrade;" in flat
    assert "proxy_set_header Connection $connection_upgrade;" in flat
    assert "location /.well-known/acme-challenge/ {" in flat
    assert "proxy_pass http://certkeeper_certs;" in flat and "server 127.0.0.1:8089;" in flat
    # The challenge location comes first in the port-80 server, before the redirect.
    assert text.index("acme-challenge") < text.index("return 301")


def test_the_worker_user_is_named_or_left_out(tmp_path: Path) -> None:
    chosen = settings(tmp_path, NGINX_USER="root", ACCESS_LOG="off")
    text = lines(rendered(tmp_path, chosen, has_cert=False))
    assert "user root;" in text and "access_log off;" in text
    without = ProxySettings(**{**chosen.__dict__, "worker_user": None})
    assert not any(line.startswith("user ") for line in lines(rendered(tmp_path, without, has_cert=False)))


def test_the_tls_alpn01_front_is_rendered_only_while_a_challenge_is_in_flight(tmp_path: Path) -> None:
    plain = rendered(tmp_path, settings(tmp_path, ENABLE_SSL="true", HTTPS_PORT="8443"), has_cert=True)
    chosen = settings(tmp_path, ENABLE_SSL="true", HTTPS_PORT="8443", TLS_ALPN_SERVICE="127.0.0.1:9443")
    paths = RunPaths(chosen.run_dir)
    at_rest = rendered(tmp_path, chosen, has_cert=True)
    # At rest: the HTTPS server on the port itself, as without TLS_ALPN_SERVICE; its socket behind the
    # front is kept (unused) so reloads that put the front on and off never remove it under a worker.
    assert "stream {" not in at_rest and "ssl_preread" not in at_rest
    assert "listen 8443 ssl http2 default_server;" in lines(
        at_rest
    ) and "listen 8443 ssl http2 default_server;" in lines(plain)
    assert f"listen unix:{paths.https_socket} ssl http2 proxy_protocol default_server;" in lines(at_rest)

    in_flight = rendered(tmp_path, chosen, has_cert=True, front=True)
    assert "ssl_preread on;" in lines(in_flight)
    assert "listen 8443;" in lines(in_flight)
    assert "listen 8443 ssl http2 default_server;" not in lines(in_flight)
    assert "proxy_pass 127.0.0.1:9443;" in lines(in_flight)
    assert f"listen unix:{paths.https_socket} ssl http2 proxy_protocol default_server;" in lines(in_flight)
