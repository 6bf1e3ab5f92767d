"""voltana's own exceptions. A ``UserError`` carries a one-line message that says what is wrong and how to
fix it; the CLI prints it and exits with code 2, without a traceback."""

from __future__ import annotations


class VoltanaError(Exception):
    """Base class of voltana's exceptions."""


class UserError(VoltanaError):
    """Bad input (a flag, a file, a config): the message names the problem and the fix."""


def validation_problem(exc: object) -> tuple[str, str]:
    """The dotted location and message of a pydantic ``ValidationError``'s first error."""
    err = exc.errors()[0]  # type: ignore[attr-defined]
    return ".".join(str(x) for x in err["loc"]), err["msg"]
