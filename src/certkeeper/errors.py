"""The one error type users see: a single line that says what is wrong and what to do."""

from __future__ import annotations

from collections.abc import Sequence


class CertkeeperError(Exception):
    """A problem the user can fix. ``str()`` is one line: what is wrong, then how to fix it."""

    def __init__(self, problem: str, fix: str = "") -> None:
        self.problem = problem
        self.fix = fix
        super().__init__(f"{problem}: {fix}" if fix else problem)


class ConfigError(CertkeeperError):
    """Invalid configuration (a flag, an environment variable, a name)."""


class ConfigErrors(ConfigError):
    """Every configuration problem a command found at once, so one run shows them all.

    The one collector for every command (issue, renew, run, controller, proxy): ``problems`` holds
    one line per problem, each printed on its own line by ``clikit.fail``.
    """

    def __init__(self, problems: Sequence[CertkeeperError | str]) -> None:
        self.problems = [str(problem) for problem in problems]
        super().__init__("; ".join(self.problems))


def problem_lines(error: CertkeeperError) -> list[str]:
    """The lines to print for ``error``: one per problem."""
    return list(error.problems) if isinstance(error, ConfigErrors) else [str(error)]


class NotRecorded(CertkeeperError):
    """An order's record cannot be written now (the store unreachable, or this process no longer the one
    that orders): the order is not placed until it can be, since nothing else could be kept either."""


class CAError(CertkeeperError):
    """The ACME CA refused or failed; ``acme_type`` is the RFC 8555 problem type when known."""

    def __init__(self, problem: str, fix: str = "", acme_type: str | None = None) -> None:
        super().__init__(problem, fix)
        self.acme_type = acme_type
        self.retry_after: float | None = None  # seconds, from the CA's Retry-After when it sent one
