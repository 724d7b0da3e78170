"""TLS as a client meets it: 1.2 and 1.3 only, modern ciphers, no OCSP staple."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import pytest
from proxy_helpers import HOST, LocalCA, RunningProxy, StartProxy, https_get, write_plain


@pytest.fixture
def tls_proxy(start_proxy: StartProxy, secrets_dir: Path, ca: LocalCA) -> RunningProxy:
    issued = ca.issue()
    write_plain(secrets_dir, issued.chain_pem, issued.key_pem)
    return start_proxy(ENABLE_SSL="true")


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3], ids=["TLSv1.2", "TLSv1.3"])
def test_tls_1_2_and_1_3_are_accepted(tls_proxy: RunningProxy, ca: LocalCA, version: ssl.TLSVersion) -> None:
    context = ca.client_context()
    context.minimum_version = context.maximum_version = version

    reply = https_get(tls_proxy.https_port, context)

    assert reply.status == 200
    assert reply.tls_version == version.name.replace("_", ".")


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_1, ssl.TLSVersion.TLSv1], ids=["TLSv1.1", "TLSv1.0"])
def test_tls_1_1_and_older_are_refused_by_the_server(
    tls_proxy: RunningProxy, ca: LocalCA, version: ssl.TLSVersion
) -> None:
    context = ca.client_context()
    # Let the client offer the old protocol, so any refusal comes from the proxy, not from local policy.
    context.set_ciphers("DEFAULT:@SECLEVEL=0")
    context.minimum_version = context.maximum_version = version

    with pytest.raises(ssl.SSLError) as refused:
        https_get(tls_proxy.https_port, context)

    assert "ALERT_PROTOCOL_VERSION" in str(refused.value).upper()


def test_tls_1_2_offers_only_forward_secret_aead_ciphers_and_no_ocsp_staple(tls_proxy: RunningProxy) -> None:
    weak = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_proxy.https_port}", "-servername", HOST,
         "-tls1_2", "-cipher", "AES128-SHA:AES256-SHA:ECDHE-RSA-AES128-SHA"],
        input=b"", capture_output=True, timeout=20, check=False,
    )  # fmt: skip
    assert weak.returncode != 0, "a CBC / non-forward-secret cipher was accepted"

    strong = subprocess.run(
        ["openssl", "s_client", "-connect", f"127.0.0.1:{tls_proxy.https_port}", "-servername", HOST,
         "-tls1_2", "-status"],
        input=b"", capture_output=True, timeout=20, check=False,
    )  # fmt: skip
    out = strong.stdout.decode()
    assert "Cipher is ECDHE-ECDSA-AES" in out or "Cipher is ECDHE-ECDSA-CHACHA20" in out
    assert "OCSP response: no response sent" in out
