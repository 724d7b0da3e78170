"""Where certificates live: files (the default) or a Kubernetes Secret."""

from certkeeper.stores.base import StoredCert, check_replacement

__all__ = ["StoredCert", "check_replacement"]
