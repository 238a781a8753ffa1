"""Process logs and the access log stream.

Process logs go to stderr, one line per record whatever it holds (a traceback is folded onto
its line), as text (``time level logger: message``) or JSON (``time``, ``level``, ``logger``,
``message``, ``exception``). The access log (logger ``homeplane.access``) goes to stdout with
nothing added: each line is exactly what its format produced, as Envoy writes ``/dev/stdout``.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time
from typing import Any

ENV_FORMAT = "HOMEPLANE_LOG_FORMAT"  # inherited by worker processes


class OneLineFormatter(logging.Formatter):
    def __init__(self, json_lines: bool, prefix: str = ""):
        super().__init__()
        self.json_lines = json_lines
        self.prefix = prefix

    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        exc = self.formatException(record.exc_info) if record.exc_info else ""
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z"
        if self.json_lines:
            doc = {"time": stamp, "level": record.levelname.lower(), "logger": record.name, "message": message}
            if self.prefix:
                doc["process"] = self.prefix
            if exc:
                doc["exception"] = exc
            return json.dumps(doc, separators=(",", ":"), default=str)
        line = f"{stamp} {record.levelname} {self.prefix + ' ' if self.prefix else ''}{record.name}: {message}"
        if exc:
            line += " | " + " | ".join(x for x in exc.splitlines() if x.strip())
        return line.replace("\n", " | ")


class _Std(logging.StreamHandler):
    """A handler on sys.stdout or sys.stderr as they are when a record is written (not when
    the handler was made: they may be swapped, by a test runner for one)."""

    def __init__(self, name: str):
        super().__init__()
        self._name = name

    @property  # type: ignore[override]
    def stream(self) -> Any:
        return getattr(sys, self._name)

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def setup_logging(level: int, log_format: str | None = None, prefix: str = "") -> None:
    """As ``logging.basicConfig``: nothing when logging is already set up (a test runner, a
    program embedding homeplane)."""
    fmt = log_format or os.environ.get(ENV_FORMAT, "text")
    os.environ[ENV_FORMAT] = fmt
    root = logging.getLogger()
    if root.handlers:
        return
    err = _Std("stderr")
    err.setFormatter(OneLineFormatter(fmt == "json", prefix))
    root.addHandler(err)
    root.setLevel(level)
    access = logging.getLogger("homeplane.access")
    out = _Std("stdout")
    out.setFormatter(logging.Formatter("%(message)s"))
    access.addHandler(out)
    access.setLevel(logging.INFO)
    access.propagate = False
