"""DNS-01 through a hosted DNS provider's API, by dns-lexicon (the optional extra ``certkeeper[lexicon]``).

Only this module imports lexicon. Credentials are read as lexicon reads them: ``LEXICON_<PROVIDER>_<OPTION>``
variables (e.g. ``LEXICON_CLOUDFLARE_AUTH_TOKEN``), or ``options`` in the solver configuration. The
lookups and the propagation check are the same as for RFC 2136 (``rfc2136.Rfc2136Solver``).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from typing import Any

from certkeeper.errors import CertkeeperError, ConfigError


class LexiconPublisher:
    def __init__(self, provider: str, options: Mapping[str, Any] | None = None) -> None:
        try:
            import lexicon.client  # noqa: F401
        except ImportError:
            raise ConfigError(
                f"--dns lexicon:{provider} needs dns-lexicon", "install it: pip install 'certkeeper[lexicon]'"
            ) from None
        self.provider = provider
        self.options = dict(options or {})
        # One change at a time: providers (and lexicon's zone-file provider) read, modify and write whole zones.
        self._lock = threading.Lock()

    def _change(self, zone: str, what: str, name: str, value: str, ttl: int) -> None:
        from lexicon.client import Client
        from lexicon.config import ConfigResolver

        settings: dict[str, Any] = {
            "provider_name": self.provider,
            "domain": zone,
            "ttl": ttl,
            self.provider: self.options,
        }
        config = ConfigResolver().with_dict(settings).with_env()  # type: ignore[no-untyped-call]
        try:
            with self._lock, Client(config) as operations:
                if what == "add":
                    operations.create_record("TXT", name, value)
                else:
                    operations.delete_record(None, "TXT", name, value)
        except Exception as error:
            # Provider errors can quote requests; keep the first line, short.
            reason = (str(error).splitlines() or [""])[0][:200]
            raise CertkeeperError(
                f"DNS provider {self.provider} could not {what} the TXT record {name} in {zone} "
                f"({type(error).__name__}: {reason})",
                f"check the LEXICON_{self.provider.upper()}_* credentials and that the account manages {zone}",
            ) from None

    def add_txt(self, zone: str, name: str, value: str, ttl: int = 60) -> None:
        self._change(zone, "add", name, value, ttl)

    def delete_txt(self, zone: str, name: str, value: str) -> None:
        self._change(zone, "delete", name, value, 60)
