"""The ``certkeeper`` command line.

Sub-commands live in their own modules and are imported only when invoked, so that
``certkeeper --help`` stays fast (no ACME, cryptography or Kubernetes imports).
"""

from __future__ import annotations

import faulthandler
import importlib
import sys

import click

from certkeeper.version import version_line

# name -> ("module:attribute", one-line help shown by --help without importing the module)
COMMANDS: dict[str, tuple[str, str]] = {
    "issue": ("certkeeper.commands.issue:issue", "Issue a certificate for NAMES (or many, with --file)."),
    "renew": ("certkeeper.commands.renew:renew", "Renew every certificate in the store that is due."),
    "status": ("certkeeper.commands.status:status", "Show the certificates in the store."),
    "run": (
        "certkeeper.kube.command:run",
        "Keep a Kubernetes Secret issued and renewed (the seed's container).",
    ),
    "controller": (
        "certkeeper.kube.controller_command:controller",
        "Keep every Certificate (and annotated Ingress) in a cluster issued and renewed.",
    ),
    "proxy": (
        "certkeeper.proxy.command:proxy",
        "Run nginx as a TLS-terminating proxy that hot-reloads certificates.",
    ),
}


class LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target[0].split(":")
        command = getattr(importlib.import_module(module_name), attr)
        assert isinstance(command, click.Command)
        return command

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version_line(), prog_name="certkeeper", message="%(prog)s %(version)s")
def cli() -> None:
    """certkeeper: HTTPS certificates from Let's Encrypt or any ACME CA, kept valid.

    Every option can also be set as an environment variable CERTKEEPER_<OPTION>
    (for example CERTKEEPER_SERVER, CERTKEEPER_STORE).
    """


def main() -> None:
    # A crash in a C extension (a segfault) then leaves every thread's Python stack in the log, not just
    # an exit status: the one thing an operator can send us.
    faulthandler.enable()
    cli(prog_name="certkeeper")
    sys.exit(0)
