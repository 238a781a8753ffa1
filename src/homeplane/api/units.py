"""Value types shared by several kinds: Go/Gateway-API durations, quantities."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import AfterValidator, BeforeValidator

_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_SECONDS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float:
    """Seconds in a Go/Gateway API duration such as ``10s``, ``1h30m``, ``500ms`` or ``0s``."""
    s = value.strip()
    if s in ("0", "-0", "+0"):
        return 0.0
    neg = s.startswith("-")
    if s[:1] in "+-":
        s = s[1:]
    pos = 0
    total = 0.0
    for m in _DURATION_PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"invalid duration {value!r} (expected e.g. 10s, 1m30s, 500ms)")
    return -total if neg else total


_QUANTITY_SUFFIX = {
    "": 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12,
    "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40,
}


def parse_quantity(value: str | int) -> int:
    """Bytes in a Kubernetes quantity such as ``64Ki``, ``1Mi``, ``32768`` or ``1.5M``."""
    s = str(value).strip()
    num = s.rstrip("kKMGTi")
    suffix = s[len(num) :]
    try:
        if suffix not in _QUANTITY_SUFFIX:
            raise ValueError
        return int(float(num) * _QUANTITY_SUFFIX[suffix])
    except ValueError:
        raise ValueError(f"invalid quantity {value!r} (expected e.g. 64Ki, 1Mi, 32768)") from None


def _check_duration(value: str) -> str:
    parse_duration(value)
    return value


def _to_str(value: object) -> object:
    # "1.2" written without quotes is a float to YAML; the API field is a string.
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


# A duration kept in its source spelling, validated at load time.
Duration = Annotated[str, AfterValidator(_check_duration)]

# Kubernetes IntOrString: YAML may type "80" as an int or a string; keep what was written.
IntOrString = int | str

# Strings that YAML might have typed as numbers (e.g. version "1.2", a plain 8080).
LooseStr = Annotated[str, BeforeValidator(_to_str)]
