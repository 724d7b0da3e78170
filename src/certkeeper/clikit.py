"""Small helpers shared by the sub-commands: options settable from CERTKEEPER_* variables."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def option(*decls: str, **attrs: Any) -> Callable[[F], F]:
    """A click option whose environment variable is CERTKEEPER_<LONG NAME>, shown in --help."""
    long_name = next(d for d in decls if d.startswith("--")).split("/")[0]
    attrs.setdefault("envvar", "CERTKEEPER_" + long_name[2:].replace("-", "_").upper())
    attrs.setdefault("show_envvar", True)
    return click.option(*decls, **attrs)


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit non-zero."""
    click.echo(f"certkeeper: error: {message}", err=True)
    raise SystemExit(code)
