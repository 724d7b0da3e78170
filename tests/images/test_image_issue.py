"""``certkeeper issue`` from the image, against a real Pebble: a certificate on a mounted volume."""

from __future__ import annotations

import stat
import subprocess
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from testbench import containers, images
from testbench.pebble import Pebble

CA_BUNDLE = "/etc/certkeeper/pebble-ca.pem"


def test_issue_from_the_image_writes_a_verified_certificate_to_the_store_volume(
    built: dict[str, images.Built], pebble: Pebble, owned_dir: Callable[[], Path], tmp_path: Path
) -> None:
    store = owned_dir()
    mounts = [
        containers.Mount(images.STORE_DIR, store),
        containers.Mount(CA_BUNDLE, Path(pebble.ca_bundle), read_only=True),
    ]
    with containers.container(built["certkeeper"].reference, mounts) as box:
        box.set_env(
            {
                "CERTKEEPER_SERVER": pebble.directory_url,
                "CERTKEEPER_CA_BUNDLE": CA_BUNDLE,
                "CERTKEEPER_HTTP_BIND": f"127.0.0.1:{pebble.http_port}",
            }
        )
        assert box.run(["/bin/true"]).returncode == 0
        before = box.written()

        result = box.run([box.entrypoint[0], "issue", "image.test", "www.image.test"])

        assert result.returncode == 0, result.stdout + result.stderr
        assert result.stdout.startswith("issued image.test www.image.test: serial ")
        assert box.written() == before, "issue wrote into the image instead of the store volume"

    lineage = store / "image.test"
    cert = x509.load_pem_x509_certificate((lineage / "cert.pem").read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(x509.DNSName)
    assert set(names) == {"image.test", "www.image.test"}
    (tmp_path / "root.pem").write_bytes(pebble.root_pem())
    verify = subprocess.run(
        [
            "openssl",
            "verify",
            "-CAfile",
            tmp_path / "root.pem",
            "-untrusted",
            lineage / "chain.pem",
            lineage / "cert.pem",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr
    key = (lineage / "privkey.pem").stat()
    assert stat.S_IMODE(key.st_mode) == 0o600
    assert key.st_uid == images.UID, "the store belongs to the image's unprivileged user"
