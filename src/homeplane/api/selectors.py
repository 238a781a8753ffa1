"""Label selectors in kubectl's string form: ``a=b,c!=d,e in (x,y),f notin (z),!g,h``.

Shared by ``homeplane get -l`` and external-dns's ``--label-filter``/``--annotation-filter``.
"""

from __future__ import annotations

import re
from typing import Mapping

Requirement = tuple[str, str, tuple[str, ...]]  # key, op (= != in notin exists !), values

_REQ = re.compile(
    r"\s*(?:(?P<not>!)\s*(?P<nkey>[^\s,=!()]+)"
    r"|(?P<key>[^\s,=!()]+)\s*(?:(?P<op>==|=|!=)\s*(?P<val>[^\s,()]*)"
    r"|\s+(?P<setop>in|notin)\s*\((?P<set>[^)]*)\))?)\s*(?:,|$)"
)


# a label key (an optional DNS-subdomain prefix and a name) and a label value, as Kubernetes checks them
_KEY = re.compile(r"(?:[a-z0-9]([-a-z0-9.]*[a-z0-9])?/)?[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?")
_VALUE = re.compile(r"(?:[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)?")


def parse_selector(text: str) -> list[Requirement]:
    """The requirements of a selector; ValueError naming the place it does not parse."""
    out: list[Requirement] = []
    pos, text = 0, text.strip()
    if text.endswith(","):
        raise ValueError(f"cannot parse selector {text!r}: it ends with a comma")
    while pos < len(text):
        m = _REQ.match(text, pos)
        if not m or m.end() == pos:
            raise ValueError(f"cannot parse selector {text!r} at {text[pos:]!r}")
        key = m.group("nkey") or m.group("key")
        values = [m.group("val")] if m.group("op") else [v.strip() for v in (m.group("set") or "").split(",") if v.strip()]
        if not _KEY.fullmatch(key or "") or not all(_VALUE.fullmatch(v or "") for v in values):
            raise ValueError(f"cannot parse selector {text!r}: {m.group(0).strip(' ,')!r} is not a label requirement")
        pos = m.end()
        if m.group("not"):
            out.append((m.group("nkey"), "!", ()))
        elif m.group("op"):
            out.append((m.group("key"), "!=" if m.group("op") == "!=" else "=", (m.group("val"),)))
        elif m.group("setop"):
            out.append((m.group("key"), m.group("setop"), tuple(v.strip() for v in m.group("set").split(",") if v.strip())))
        else:
            out.append((m.group("key"), "exists", ()))
    return out


def selector_matches(reqs: list[Requirement], labels: Mapping[str, str]) -> bool:
    for key, op, vals in reqs:
        have = labels.get(key)
        if op == "=" and have != vals[0]:
            return False
        if op == "!=" and have == vals[0]:
            return False
        if op == "in" and have not in vals:
            return False
        if op == "notin" and have in vals:
            return False
        if op == "exists" and have is None:
            return False
        if op == "!" and have is not None:
            return False
    return True
