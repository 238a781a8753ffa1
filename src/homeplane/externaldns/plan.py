"""external-dns's planner: desired and current records in, creates/updates/deletes out (pure).

Rows are keyed by (name, set identifier), then by record type. A name nobody holds gets the
candidates created (the one with the least targets, addresses before names, when several want
the same type); a type nobody wants any more is deleted; a held type is updated when its
targets, TTL (if set) or provider properties differ. Creates on a name that already has
records happen only when every record there is ours. A CNAME that competes with other types
for a name is dropped in their favour (RFC 1034: a CNAME stands alone). Then the policy
(``sync``, ``upsert-only``, ``create-only``), then ownership: nothing whose owner is someone
else is updated or deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from homeplane.externaldns.endpoint import (
    CNAME,
    DEFAULT_MANAGED,
    OWNER,
    RESOURCE,
    DomainFilter,
    Endpoint,
    endpoint_sort_key,
    normalize,
    same_targets,
)

POLICIES = ("sync", "upsert-only", "create-only")


@dataclass
class Changes:
    create: list[Endpoint] = field(default_factory=list)
    update_old: list[Endpoint] = field(default_factory=list)
    update_new: list[Endpoint] = field(default_factory=list)
    delete: list[Endpoint] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.create or self.delete or self.update_new)

    def count(self) -> int:
        return len(self.create) + len(self.update_new) + len(self.delete)

    def to_json(self) -> dict[str, list[dict]]:
        """The webhook protocol's body for POST /records (external-dns >= 0.18 spells the keys
        in lower camel case; Go webhooks read them case-insensitively)."""
        return {
            "create": [e.to_json() for e in self.create],
            "updateOld": [e.to_json() for e in self.update_old],
            "updateNew": [e.to_json() for e in self.update_new],
            "delete": [e.to_json() for e in self.delete],
        }

    @classmethod
    def from_json(cls, doc: dict) -> Changes:
        """Either spelling of the keys (older external-dns sent ``Create``, ``UpdateOld`` …)."""
        if not isinstance(doc, dict):
            raise ValueError("changes must be a JSON object")
        lower = {str(k).lower(): v for k, v in doc.items()}
        get = lambda k: [Endpoint.from_json(e) for e in (lower.get(k) or [])]  # noqa: E731
        return cls(get("create"), get("updateold"), get("updatenew"), get("delete"))


@dataclass
class _Typed:
    current: Endpoint | None = None
    candidates: list[Endpoint] = field(default_factory=list)


@dataclass
class _Row:
    current: list[Endpoint] = field(default_factory=list)
    candidates: list[Endpoint] = field(default_factory=list)
    by_type: dict[str, _Typed] = field(default_factory=dict)


def _resolve_create(candidates: list[Endpoint]) -> Endpoint:
    return min(candidates, key=endpoint_sort_key)


def _resolve_update(current: Endpoint, candidates: list[Endpoint]) -> Endpoint:
    """The candidate from the resource that already holds the name, else the least one."""
    ordered = sorted(candidates, key=endpoint_sort_key)
    held_by = current.labels.get(RESOURCE)
    for c in ordered:
        if c.labels.get(RESOURCE) == held_by:
            return c
    return ordered[0]


def _resolve_types(row: _Row) -> dict[str, _Typed]:
    if len(row.candidates) <= 1:
        return row.by_type
    kinds = {c.record_type == CNAME for c in row.candidates}
    if kinds != {True, False}:
        return row.by_type
    return {t: (_Typed(rec.current, []) if t == CNAME else rec) for t, rec in row.by_type.items()}


def _props_changed(desired: Endpoint, current: Endpoint) -> bool:
    want = dict(desired.provider_specific)
    for name, value in current.provider_specific:
        if name not in want or want.pop(name) != value:
            return True
    return bool(want)


def _needs_update(desired: Endpoint, current: Endpoint) -> bool:
    return (
        (desired.ttl != 0 and desired.ttl != current.ttl)
        or not same_targets(desired.targets, current.targets)
        or _props_changed(desired, current)
    )


def calculate(
    current: list[Endpoint],
    desired: list[Endpoint],
    owner: str = "",
    policy: str = "sync",
    domain_filter: DomainFilter | None = None,
    managed: tuple[str, ...] = DEFAULT_MANAGED,
    exclude: tuple[str, ...] = (),
) -> Changes:
    df = domain_filter or DomainFilter()
    rows: dict[tuple[str, str], _Row] = {}

    def add(ep: Endpoint, as_current: bool) -> None:
        if not df.match(ep.dns_name) or ep.record_type not in managed or ep.record_type in exclude:
            return
        row = rows.setdefault((normalize(ep.dns_name), ep.set_identifier), _Row())
        typed = row.by_type.setdefault(ep.record_type, _Typed())
        if as_current:
            row.current.append(ep)
            typed.current = ep
        else:
            row.candidates.append(ep)
            typed.candidates.append(ep)

    for ep in current:
        add(ep, True)
    for ep in desired:
        add(ep, False)

    ch = Changes()
    for key in sorted(rows):  # sorted: the same inputs give the same list every time
        row = rows[key]
        if not row.current:
            for t in sorted(typed := _resolve_types(row)):
                if typed[t].candidates:
                    ch.create.append(_resolve_create(typed[t].candidates))
        elif not row.candidates:
            ch.delete.extend(row.current)
        else:
            creates: list[Endpoint] = []
            typed = _resolve_types(row)
            for t in sorted(typed):
                rec = typed[t]
                if rec.current is not None and not rec.candidates:
                    ch.delete.append(rec.current)
                elif rec.current is None and rec.candidates:
                    creates.append(_resolve_create(rec.candidates))
                elif rec.current is not None:
                    update = _resolve_update(rec.current, rec.candidates)
                    if _needs_update(update, rec.current):
                        update = update.with_labels(**{OWNER: rec.current.labels.get(OWNER, "")})
                        ch.update_new.append(update)
                        ch.update_old.append(rec.current)
            # creates beside records only when all of them are ours
            if creates and (not owner or all(c.owned_by(owner) for c in row.current)):
                ch.create.extend(creates)

    if policy == "upsert-only":
        ch = Changes(ch.create, ch.update_old, ch.update_new, [])
    elif policy == "create-only":
        ch = Changes(ch.create, [], [], [])
    if owner:
        seen: set[tuple] = set()
        deletes = []
        for e in ch.delete:
            if e.owned_by(owner) and (e.key, e.targets) not in seen:
                seen.add((e.key, e.targets))
                deletes.append(e)
        pairs = [(o, n) for o, n in zip(ch.update_old, ch.update_new) if o.owned_by(owner) and n.owned_by(owner)]
        ch = Changes(ch.create, [o for o, _ in pairs], [n for _, n in pairs], deletes)
    return ch


def unowned_conflicts(current: list[Endpoint], desired: list[Endpoint], owner: str) -> list[tuple[Endpoint, Endpoint]]:
    """Desired records a name held by someone else blocks: (desired, the record in the way), for
    the plan's explanation (external-dns only logs these at debug level)."""
    held: dict[str, list[Endpoint]] = {}
    for c in current:
        if not c.owned_by(owner):
            held.setdefault(normalize(c.dns_name), []).append(c)
    out = []
    for d in desired:
        for c in held.get(normalize(d.dns_name), []):
            if c.set_identifier == d.set_identifier:
                out.append((d, c))
                break
    return out
