"""Names of the Secrets that go with a certificate's Secret (its ACME account, its order in flight).

A Secret name is a DNS-1123 subdomain of at most 253 characters. ``certs-<first domain>`` fits for any
domain name up to 247 characters, but ``<that>-acme-account`` may not: cut at 253 it can end in ``-``,
which the API refuses (422) on every try. A long name keeps a readable head and a hash of the whole.
"""

from __future__ import annotations

import hashlib

MAX_NAME = 253
HASH_CHARS = 10


def companion_name(base: str, suffix: str) -> str:
    """``base + suffix`` when it fits, else the head of ``base``, a hash of it, then ``suffix``."""
    name = base + suffix
    if len(name) <= MAX_NAME:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:HASH_CHARS]
    head = base[: MAX_NAME - len(suffix) - HASH_CHARS - 1].rstrip("-.")
    return f"{head}-{digest}{suffix}"
