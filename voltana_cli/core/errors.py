"""voltana's own exceptions. A ``UserError`` carries a one-line message that says what is wrong and how to
fix it; the CLI prints it and exits with code 2, without a traceback.

Core speaks in domain terms: an error about one input names the field (``n_prefill``, ``request_rates``,
``ecofreq.margin``) in ``field`` and says the problem in ``problem``; it never names a command-line flag.
Each command maps the fields it exposes to its own flags when it prints the error (``commands.user_errors``),
so the same core call reads right from Python, from a config file and from the CLI.
"""

from __future__ import annotations


class VoltanaError(Exception):
    """Base class of voltana's exceptions."""


class UserError(VoltanaError):
    """Bad input (a flag, a file, a config): the message names the problem and the fix.

    Args:
        problem: what is wrong and how to fix it, in domain terms.
        field: the input it is about (a config field name, dotted for nested ones), or ``None`` when the
            problem is not about one field (a file's content, a combination of inputs).
    """

    def __init__(self, problem: str, field: str | None = None):
        self.problem = problem
        self.field = field
        super().__init__(f"{field}: {problem}" if field else problem)


def validation_problem(exc: object) -> tuple[str, str]:
    """The dotted location and message of a pydantic ``ValidationError``'s first error."""
    err = exc.errors()[0]  # type: ignore[attr-defined]
    return ".".join(str(x) for x in err["loc"]), err["msg"]
