"""Hand-made broken certificates: a real certificate's DER edited in one place, re-wrapped as PEM.

The signature is left as it was: nothing in the proxy verifies it (neither does nginx for its own
certificate), and the point is a certificate whose outer DER parses while one field inside does not.
"""

from __future__ import annotations

import base64
import random
import textwrap
from collections.abc import Callable

SEQUENCE = 0x30
INTEGER = 0x02
OCTET_STRING = 0x04
VERSION_TAG = 0xA0
EXTENSIONS_TAG = 0xA3
AUTHORITY_KEY_IDENTIFIER_OID = bytes.fromhex("0603551d23")


def encode(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        return bytes([tag, n]) + content
    size = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(size)]) + size + content


def split(der: bytes) -> tuple[int, bytes]:
    """One TLV (definite lengths only, as DER has): its tag and its content."""
    tag, first = der[0], der[1]
    if first < 0x80:
        return tag, der[2 : 2 + first]
    count = first & 0x7F
    n = int.from_bytes(der[2 : 2 + count], "big")
    return tag, der[2 + count : 2 + count + n]


def children(content: bytes) -> list[bytes]:
    """The TLVs inside a constructed value, each whole (header included)."""
    out = []
    while content:
        tag, inner = split(content)
        whole = len(encode(tag, inner))
        out.append(content[:whole])
        content = content[whole:]
    return out


def to_pem(der: bytes) -> bytes:
    body = "\n".join(textwrap.wrap(base64.b64encode(der).decode(), 64))
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n".encode()


def from_pem(pem: bytes) -> bytes:
    lines = pem.decode().strip().splitlines()
    end = lines.index("-----END CERTIFICATE-----")
    return base64.b64decode("".join(lines[1:end]))


def _edit_tbs(cert_der: bytes, edit: Callable[[list[bytes]], None]) -> bytes:
    _, cert = split(cert_der)
    tbs, algorithm, signature = children(cert)
    fields = children(split(tbs)[1])
    edit(fields)
    return encode(SEQUENCE, encode(SEQUENCE, b"".join(fields)) + algorithm + signature)


def _edit_extensions(fields: list[bytes], edit: Callable[[list[bytes]], None]) -> None:
    index = next(i for i, f in enumerate(fields) if f[0] == EXTENSIONS_TAG)
    extensions = children(split(split(fields[index])[1])[1])
    edit(extensions)
    fields[index] = encode(EXTENSIONS_TAG, encode(SEQUENCE, b"".join(extensions)))


def _negative_serial(fields: list[bytes]) -> None:
    fields[1] = encode(INTEGER, bytes.fromhex("ff0102030405"))


def _bad_version(fields: list[bytes]) -> None:
    fields[0] = encode(VERSION_TAG, encode(INTEGER, b"\x07"))


def _duplicate_extension(fields: list[bytes]) -> None:
    _edit_extensions(fields, lambda exts: exts.append(exts[0]))


def _corrupt_authority_key_identifier(fields: list[bytes]) -> None:
    def edit(extensions: list[bytes]) -> None:
        index = next(i for i, e in enumerate(extensions) if AUTHORITY_KEY_IDENTIFIER_OID in e)
        oid = children(split(extensions[index])[1])[0]
        # keyIdentifier [0] claims 5 bytes and holds 1: the outer DER is fine, the extension is not.
        value = encode(OCTET_STRING, encode(SEQUENCE, bytes.fromhex("800500")))
        extensions[index] = encode(SEQUENCE, oid + value)

    _edit_extensions(fields, edit)


BREAKS: dict[str, Callable[[list[bytes]], None]] = {
    "negative-serial": _negative_serial,
    "bad-version": _bad_version,
    "duplicate-extension": _duplicate_extension,
    "corrupt-authority-key-identifier": _corrupt_authority_key_identifier,
}


def broken_chain(chain_pem: bytes, how: str) -> bytes:
    """The chain with its leaf (the first certificate) broken as ``how`` names; the rest unchanged."""
    leaf_end = chain_pem.index(b"-----END CERTIFICATE-----\n") + len(b"-----END CERTIFICATE-----\n")
    leaf = _edit_tbs(from_pem(chain_pem[:leaf_end]), BREAKS[how])
    return to_pem(leaf) + chain_pem[leaf_end:]


def mutate(der: bytes, rng: random.Random) -> bytes:
    """One to three flips, inserts or deletes, often in the extensions (the end of the TBS)."""
    data = bytearray(der)
    for _ in range(rng.randint(1, 3)):
        if not data:
            data.append(rng.randrange(256))
            continue
        # Half the edits land in the last third, where the extensions, signature algorithm and signature are.
        low = len(data) * 2 // 3 if rng.random() < 0.5 else 0
        at = rng.randrange(low, len(data))
        kind = rng.randrange(3)
        if kind == 0:
            data[at] ^= 1 << rng.randrange(8)
        elif kind == 1:
            data[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 4)))
        elif len(data) > 1:
            del data[at : at + rng.randint(1, 4)]
    return bytes(data)


def mutate_inside(cert_der: bytes, rng: random.Random) -> bytes:
    """Edit the inside of one field (an extension's value, a name, the serial, the validity) and fix
    every length around it: the outer DER stays well-formed, so the edit reaches the lazy parsers."""

    def edit_value(tlv: bytes) -> bytes:
        tag, content = split(tlv)
        return encode(tag, mutate(content, rng) if content else bytes([rng.randrange(256)]))

    def edit_extension(extensions: list[bytes]) -> None:
        index = rng.randrange(len(extensions))
        parts = children(split(extensions[index])[1])
        parts[-1] = edit_value(parts[-1])  # extnValue, the OCTET STRING holding the extension itself
        if rng.random() < 0.5:
            parts[-1] = encode(OCTET_STRING, mutate(split(parts[-1])[1], rng))
        extensions[index] = encode(SEQUENCE, b"".join(parts))

    def edit(fields: list[bytes]) -> None:
        # serial, validity, issuer, subject; or an extension (half the time)
        if rng.random() < 0.5 and fields[-1][0] == EXTENSIONS_TAG:
            _edit_extensions(fields, edit_extension)
        else:
            index = rng.choice([1, 3, 4, 5])
            fields[index] = edit_value(fields[index])

    return _edit_tbs(cert_der, edit)
