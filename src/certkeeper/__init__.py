"""certkeeper: HTTPS from any ACME CA, issued fast, stored atomically, renewed on time."""

__version__ = "0.1.0"
