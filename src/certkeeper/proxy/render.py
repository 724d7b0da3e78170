"""nginx configuration rendered from ProxySettings. Every value reaching it was validated in settings.py."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from certkeeper.proxy.settings import ProxySettings

# Mozilla "intermediate" (TLS 1.2 + 1.3), as of guideline 5.7.
MOZILLA_INTERMEDIATE_CIPHERS = ":".join(
    [
        "ECDHE-ECDSA-AES128-GCM-SHA256",
        "ECDHE-RSA-AES128-GCM-SHA256",
        "ECDHE-ECDSA-AES256-GCM-SHA384",
        "ECDHE-RSA-AES256-GCM-SHA384",
        "ECDHE-ECDSA-CHACHA20-POLY1305",
        "ECDHE-RSA-CHACHA20-POLY1305",
        "DHE-RSA-AES128-GCM-SHA256",
        "DHE-RSA-AES256-GCM-SHA384",
        "DHE-RSA-CHACHA20-POLY1305",
    ]
)
HSTS_MAX_AGE = 63072000
NO_CERT_BODY = "certkeeper proxy: no certificate yet; HTTPS starts as soon as one is issued\\n"


@dataclass(frozen=True)
class RunPaths:
    root: Path

    @property
    def conf(self) -> Path:
        return self.root / "nginx.conf"

    @property
    def pid(self) -> Path:
        return self.root / "nginx.pid"

    @property
    def temp(self) -> Path:
        return self.root / "tmp"

    @property
    def live(self) -> Path:
        return self.root / "live"

    @property
    def dhparam(self) -> Path:
        return self.root / "dhparam.pem"

    @property
    def https_socket(self) -> Path:
        """Where the HTTPS server listens behind the TLS-ALPN-01 stream front."""
        return self.root / "https.sock"

    @property
    def alpn_socket(self) -> Path:
        """The stream hop that takes the PROXY header off ACME TLS-ALPN-01 connections."""
        return self.root / "alpn.sock"

    @property
    def lock(self) -> Path:
        return self.root / "certkeeper.lock"


def _listen(settings: ProxySettings, port: int) -> str:
    if settings.listen_address is None:
        return str(port)
    host = settings.listen_address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _redirect_target(settings: ProxySettings) -> str:
    port = "" if settings.https_port == 443 else f":{settings.https_port}"
    return f"https://$host{port}$request_uri"


def _proxy_location(settings: ProxySettings) -> str:
    auth = ""
    if settings.basic_auth:
        # Read by nginx per request, so a changed htpasswd in the Secret applies without a reload.
        auth = f'            auth_basic "Restricted";\n            auth_basic_user_file {settings.htpasswd};\n'
    return f"        location / {{\n{auth}            proxy_pass http://certkeeper_backend;\n        }}\n"


def _challenge_location(settings: ProxySettings) -> str:
    if settings.cert_service is None:
        return ""
    return (
        "        location /.well-known/acme-challenge/ {\n            proxy_pass http://certkeeper_certs;\n        }\n"
    )


def _alpn_front(settings: ProxySettings, paths: RunPaths) -> str:
    """The port-443 front with TLS_ALPN_SERVICE: ``acme-tls/1`` to certkeeper, the rest to the HTTPS server.

    ssl_preread reads only the ClientHello; the TLS session itself is between the client and the
    server chosen. The HTTPS server sits on a unix socket (no second TCP stack) and gets the client's
    address by the PROXY protocol.
    """
    return f"""
stream {{
    map $ssl_preread_alpn_protocols $certkeeper_tls_route {{
        ~(^|,)acme-tls/1(,|$) unix:{paths.alpn_socket};
        default unix:{paths.https_socket};
    }}
    server {{
        listen {_listen(settings, settings.https_port)};
        ssl_preread on;
        proxy_protocol on;
        proxy_pass $certkeeper_tls_route;
    }}
    # The PROXY header is for the HTTPS server only: ACME connections (a few per order) lose it here.
    server {{
        listen unix:{paths.alpn_socket} proxy_protocol;
        proxy_pass {settings.tls_alpn_service};
    }}
}}
"""


def render(settings: ProxySettings, paths: RunPaths, *, has_cert: bool, dhparam: bool, front: bool = False) -> str:
    """``front``: the TLS-ALPN-01 stream front on the HTTPS port (only while a challenge is in flight)."""
    names = " ".join(settings.server_names) or "_"
    front = front and settings.enable_ssl and settings.tls_alpn_service is not None
    # Loaded whether the front is on or not: a reload that adds the front then loads no new module.
    alpn = settings.enable_ssl and settings.tls_alpn_service is not None
    modules = f"load_module {settings.stream_module};\n" if alpn and settings.stream_module else ""
    user = f"user {settings.worker_user};\n" if settings.worker_user else ""
    temp = paths.temp
    connection = "$connection_upgrade" if settings.web_sockets else '""'
    upgrade_map = ""
    upgrade_header = ""
    if settings.web_sockets:
        upgrade_map = '    map $http_upgrade $connection_upgrade {\n        default upgrade;\n        "" "";\n    }\n'
        upgrade_header = "    proxy_set_header Upgrade $http_upgrade;\n"
    certs_upstream = ""
    if settings.cert_service is not None:
        certs_upstream = f"    upstream certkeeper_certs {{\n        server {settings.cert_service};\n    }}\n"

    if not settings.enable_ssl:
        http_default = _proxy_location(settings)
    elif has_cert:
        http_default = f"        location / {{\n            return 301 {_redirect_target(settings)};\n        }}\n"
    else:
        http_default = (
            "        location / {\n"
            "            add_header Retry-After 30 always;\n"
            f'            return 503 "{NO_CERT_BODY}";\n'
            "        }\n"
        )

    https = ""
    if settings.enable_ssl and has_cert:
        hsts = (
            f'        add_header Strict-Transport-Security "max-age={HSTS_MAX_AGE}" always;\n' if settings.hsts else ""
        )
        dh = f"        ssl_dhparam {paths.dhparam};\n" if dhparam else ""
        listen = f"{_listen(settings, settings.https_port)} ssl http2 default_server;\n"
        behind_front = (
            f"unix:{paths.https_socket} ssl http2 proxy_protocol default_server;\n"
            "        set_real_ip_from unix:;\n"
            "        real_ip_header proxy_protocol;\n"
        )
        if front:
            listen = behind_front
        elif alpn:
            # The socket behind the front stays across the reloads that take the front off and put it back:
            # a reload that removed it would reset the connections nginx's old workers (the front's) still
            # accept for a moment. Unused at rest, it costs nothing per request (realip looks only at
            # connections that came with a PROXY header).
            listen += f"        listen {behind_front}"
        https = (
            "    server {\n"
            f"        listen {listen}"
            f"        server_name {names};\n"
            "        # Not for files: $realpath_root resolves the 'current' symlink once per handshake, so a\n"
            "        # certificate swap never pairs the old certificate with the new key.\n"
            f"        root {paths.live / 'current'};\n"
            "        ssl_certificate $certkeeper_generation/cert.pem;\n"
            "        ssl_certificate_key $certkeeper_generation/key.pem;\n"
            "        ssl_protocols TLSv1.2 TLSv1.3;\n"
            f"        ssl_ciphers {MOZILLA_INTERMEDIATE_CIPHERS};\n"
            "        ssl_ecdh_curve X25519:prime256v1:secp384r1;\n"
            "        ssl_prefer_server_ciphers off;\n"
            "        ssl_session_cache shared:certkeeper:10m;\n"
            "        ssl_session_timeout 1d;\n"
            "        ssl_session_tickets off;\n"
            "        ssl_stapling off;\n"
            f"{dh}{hsts}"
            f"{_proxy_location(settings)}"
            "    }\n"
        )

    return f"""# Rendered by certkeeper proxy at every start; edits are overwritten.
{modules}{user}worker_processes auto;
pid {paths.pid};
error_log stderr notice;
daemon off;

events {{
    worker_connections 4096;
}}

http {{
    server_tokens off;
    default_type text/plain;
    access_log {settings.access_log};
    client_body_temp_path {temp}/client_body;
    proxy_temp_path {temp}/proxy;
    fastcgi_temp_path {temp}/fastcgi;
    uwsgi_temp_path {temp}/uwsgi;
    scgi_temp_path {temp}/scgi;
    sendfile on;
    keepalive_timeout 65;
    client_max_body_size 20M;

    # A map is cached per request: both certificate paths below see the same resolved generation.
    map $realpath_root $certkeeper_generation {{
        default $realpath_root;
    }}
{upgrade_map}
    upstream certkeeper_backend {{
        server {settings.target};
        keepalive 32;
    }}
{certs_upstream}
    proxy_http_version 1.1;
    proxy_set_header Connection {connection};
{upgrade_header}    proxy_set_header Host $host;
    proxy_set_header X-Real-IP $remote_addr;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    proxy_read_timeout 90;

    server {{
        listen {_listen(settings, settings.http_port)} default_server;
        server_name {names};
{_challenge_location(settings)}{http_default}    }}
{https}}}
{_alpn_front(settings, paths) if front else ""}"""
