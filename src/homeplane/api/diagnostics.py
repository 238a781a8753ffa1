"""Diagnostics: every problem found while loading or translating, with its place.

Loading never raises on bad input; it records a :class:`Diagnostic` and moves on,
so one broken document never hides the others. A diagnostic names the file, the
line, the document index inside the file, the resource (kind/namespace/name) and
the field path, so that a person can go straight to the problem.
"""

from __future__ import annotations

import contextlib
from contextvars import ContextVar
from dataclasses import asdict, dataclass, field
from enum import Enum
from typing import Iterable, Iterator

# The file being read or built right now: an unexpected error anywhere below names it.
current_file: ContextVar[str | None] = ContextVar("current_file", default=None)


@contextlib.contextmanager
def processing(file: str) -> Iterator[None]:
    """Mark the file being processed; an unexpected exception leaving the block carries its
    name (``failed_file``), innermost first, for the one-line report at the top."""
    token = current_file.set(file)
    try:
        yield
    except Exception as e:
        if getattr(e, "failed_file", None) is None:
            try:
                e.failed_file = file  # type: ignore[attr-defined]
            except AttributeError:
                pass
        raise
    finally:
        current_file.reset(token)


class Severity(str, Enum):
    ERROR = "error"
    WARNING = "warning"
    INFO = "info"


@dataclass(frozen=True, slots=True)
class SourceRef:
    """Where a resource came from: a file, the document index in it, its first line."""

    file: str
    document: int = 0
    line: int | None = None


@dataclass(frozen=True, slots=True)
class Diagnostic:
    severity: Severity
    message: str
    file: str | None = None
    line: int | None = None
    document: int | None = None
    kind: str | None = None
    namespace: str | None = None
    name: str | None = None
    field: str | None = None
    # A short machine-readable code ("UnknownField", "SubstitutionFailed" ...).
    code: str = ""

    def where(self) -> str:
        parts = []
        if self.file:
            loc = self.file
            if self.line is not None:
                loc += f":{self.line}"
            parts.append(loc)
        if self.document is not None and self.file:
            parts.append(f"doc {self.document}")
        if self.kind:
            ident = self.kind
            if self.name:
                ident += "/" + (f"{self.namespace}/" if self.namespace else "") + self.name
            parts.append(ident)
        if self.field:
            parts.append(self.field)
        return " ".join(parts)

    def __str__(self) -> str:
        where = self.where()
        return f"{self.severity.value}: {where + ': ' if where else ''}{self.message}"

    def to_json(self) -> dict:
        d = asdict(self)
        d["severity"] = self.severity.value
        return d


@dataclass
class Diagnostics:
    """An append-only collection of diagnostics."""

    items: list[Diagnostic] = field(default_factory=list)

    def add(self, d: Diagnostic) -> None:
        self.items.append(d)

    def extend(self, ds: Iterable[Diagnostic]) -> None:
        self.items.extend(ds)

    def error(self, message: str, **where) -> None:
        self.items.append(Diagnostic(Severity.ERROR, message, **where))

    def warning(self, message: str, **where) -> None:
        self.items.append(Diagnostic(Severity.WARNING, message, **where))

    def info(self, message: str, **where) -> None:
        self.items.append(Diagnostic(Severity.INFO, message, **where))

    @property
    def errors(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity is Severity.ERROR]

    @property
    def warnings(self) -> list[Diagnostic]:
        return [d for d in self.items if d.severity is Severity.WARNING]

    def __iter__(self) -> Iterator[Diagnostic]:
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)
