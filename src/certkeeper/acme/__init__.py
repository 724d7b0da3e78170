"""The ACME protocol, on certbot's ``acme`` library: the only package that imports ``acme``/``josepy``."""

from certkeeper.acme.account import Account, AccountStore, ensure_account, register_again
from certkeeper.acme.client import AcmeClient

__all__ = ["Account", "AccountStore", "AcmeClient", "ensure_account", "register_again"]
