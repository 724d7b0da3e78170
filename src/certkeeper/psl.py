"""Registered domains from the Public Suffix List (tldextract's bundled snapshot; nothing is downloaded).

Let's Encrypt counts certificates per registered domain: ``a.b.example.co.uk`` counts against
``example.co.uk``, and private suffixes count too (``foo.github.io`` is its own registered domain).
The only module that imports tldextract.
"""

from __future__ import annotations

import functools
from typing import Any

from certkeeper.spec import ip_of


@functools.cache
def _extractor() -> Any:
    # Imported and read at the first name, not at start: `status` and a `renew` with nothing due never
    # need the list (about 10 ms of import and the snapshot's parse). No suffix-list URLs and no cache
    # directory: the snapshot shipped with the package.
    import tldextract

    return tldextract.TLDExtract(suffix_list_urls=(), cache_dir=None, include_psl_private_domains=True)


@functools.lru_cache(maxsize=65536)
def registered_domain(name: str) -> str:
    """The registered domain of ``name`` (a wildcard counts as its base; an IP address is itself).

    A name under a suffix the list does not know (``.test``, ``.internal``) counts by its last two
    labels, as the list's default rule ``*`` says.
    """
    name = name.lower().rstrip(".").removeprefix("*.")
    if ip_of(name):
        return name
    parts = _extractor()(name)
    domain = f"{parts.domain}.{parts.suffix}" if parts.domain and parts.suffix else ""
    return domain or ".".join(name.split(".")[-2:])
