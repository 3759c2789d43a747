"""What can go wrong with a mapping: a file that cannot be used, or a request that does not fit."""

from __future__ import annotations

from dataclasses import dataclass

from adapters._exceptions import PermanentError


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a mapping file, located by line and by field path."""

    source: str
    line: int | None
    where: str
    message: str

    def __str__(self) -> str:
        at = f"{self.source}:{self.line}" if self.line else self.source
        return f"{at}: {self.where}: {self.message}" if self.where else f"{at}: {self.message}"


class MappingFileError(Exception):
    """A mapping file cannot be used; `problems` lists each error with its file and line."""

    def __init__(self, problems: list[Problem]) -> None:
        self.problems = problems
        noun = "problem" if len(problems) == 1 else "problems"
        lines = "\n  ".join(str(p) for p in problems)
        super().__init__(f"invalid mapping ({len(problems)} {noun}):\n  {lines}")


class MappingFailed(PermanentError):
    """A request cannot be mapped (a required field has no value, a value cannot be converted).

    Retrying cannot help, so it is permanent. The message names the mapping, the back-end field
    and the request, never the values (they may be a resident's personal data).
    """

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class UnknownStatus(PermanentError):
    """A back-end status code that the mapping's status table does not list (and no default)."""

    def __init__(self, message: str, *, code: str) -> None:
        super().__init__(message)
        self.code = code
