"""The store-based sub-commands: issue, renew, status."""
