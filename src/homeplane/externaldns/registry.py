"""The TXT registry, compatible with external-dns (>= 0.18): who owns which record.

Each managed record has a TXT record beside it whose text is
``"heritage=external-dns,external-dns/owner=<owner>,external-dns/resource=<kind/ns/name>"``.
Its name is ``prefix + <type>- + name`` (the prefix goes before the first label; with
``%{record_type}`` in the prefix or suffix, the type goes there instead), or with a suffix,
``<type>-<first label> + suffix + . + rest``. Old-format TXT names (no type) are still read,
so records made by an older external-dns stay owned. A record whose owner is someone else, or
that has no registry TXT at all, is never changed or deleted.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from homeplane.externaldns.endpoint import (
    AAAA,
    OWNED_RECORD,
    OWNER,
    SUPPORTED_TYPES,
    TXT,
    Endpoint,
    normalize,
)
from homeplane.externaldns.plan import Changes

TEMPLATE = "%{record_type}"
HERITAGE = "external-dns"


class InvalidHeritage(ValueError):
    pass


def parse_labels(text: str) -> dict[str, str]:
    """The labels in a registry TXT's text; InvalidHeritage when it is not external-dns's."""
    labels: dict[str, str] = {}
    found = False
    for token in text.strip('"').split(","):
        key, sep, val = token.partition("=")
        if not sep:
            continue
        if key == "heritage":
            if val != HERITAGE:
                raise InvalidHeritage(text)
            found = True
        elif key.startswith(HERITAGE + "/"):
            labels[key[len(HERITAGE) + 1:]] = val
    if not found:
        raise InvalidHeritage(text)
    return labels


def serialize_labels(labels: dict[str, str], quotes: bool = True) -> str:
    tokens = [f"heritage={HERITAGE}"] + [f"{HERITAGE}/{k}={labels[k]}" for k in sorted(labels)]
    text = ",".join(tokens)
    return f'"{text}"' if quotes else text


@dataclass(frozen=True)
class NameMapper:
    """external-dns's affix name mapper (``--txt-prefix``, ``--txt-suffix``,
    ``--txt-wildcard-replacement``)."""

    prefix: str = ""
    suffix: str = ""
    wildcard_replacement: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "prefix", self.prefix.lower())
        object.__setattr__(self, "suffix", self.suffix.lower())
        object.__setattr__(self, "wildcard_replacement", self.wildcard_replacement.lower())

    @property
    def _type_in_affix(self) -> bool:
        return TEMPLATE in self.prefix or TEMPLATE in self.suffix

    def to_txt_name(self, dns_name: str, record_type: str) -> str:
        parts = dns_name.split(".", 1)
        rt = record_type.lower()
        prefix = self.prefix.replace(TEMPLATE, rt)
        suffix = self.suffix.replace(TEMPLATE, rt)
        if self.wildcard_replacement and parts[0] == "*":
            parts[0] = self.wildcard_replacement
        if not self._type_in_affix:
            parts[0] = f"{rt}-{parts[0]}"
        if len(parts) < 2:
            return prefix + parts[0] + suffix
        return f"{prefix}{parts[0]}{suffix}.{parts[1]}"

    def to_endpoint_name(self, txt_name: str) -> tuple[str, str]:
        """(endpoint name, record type) a TXT name stands for; type "" for the old format,
        ("", "") when the name is not the registry's."""
        name = txt_name.lower().rstrip(".")
        if not self.suffix:  # prefix (possibly empty)
            return self._drop_affix(name)
        if self.prefix:
            return "", ""
        dots = self.suffix.count(".")
        parts = name.split(".", 1 + dots)
        if len(parts) <= dots:
            return "", ""
        head, rtype = self._drop_affix(".".join(parts[: 1 + dots]))
        if len(parts) <= 1 + dots:
            return head, rtype
        return f"{head}.{parts[1 + dots]}", rtype

    def _drop_affix(self, name: str) -> tuple[str, str]:
        prefix, suffix = self.prefix, self.suffix
        is_prefix = not suffix
        if self._type_in_affix:
            for t in SUPPORTED_TYPES:
                p = prefix.replace(TEMPLATE, t.lower())
                s = suffix.replace(TEMPLATE, t.lower())
                if is_prefix and name.startswith(p):
                    return name[len(p):], t
                if not is_prefix and name.endswith(s):
                    return name[: len(name) - len(s)], t
            prefix, suffix = prefix.replace(TEMPLATE, ""), suffix.replace(TEMPLATE, "")
        if is_prefix and name.startswith(prefix):
            return _split_type(name[len(prefix):])
        if not is_prefix and name.endswith(suffix):
            return _split_type(name[: len(name) - len(suffix)])
        return "", ""


def _split_type(name: str) -> tuple[str, str]:
    head = name.split("-", 1)[0]
    for t in SUPPORTED_TYPES:
        if head == t.lower():
            return name[len(head) + 1:], t
    return name, ""


@dataclass
class TXTRegistry:
    owner: str
    mapper: NameMapper
    managed: tuple[str, ...]
    # TXT records seen at the last records(), by (name, set identifier): a create skips its TXT
    # when that one is already there
    _existing_txt: frozenset[tuple[str, str]] = frozenset()

    def records(self, provider_records: list[Endpoint]) -> list[Endpoint]:
        """The provider's records without the registry TXTs, each labelled with its owner (and
        resource) from the TXT that claims it. A managed record of ours whose TXT is missing
        gets the ``txt/force-update`` property so the plan writes the TXT again."""
        plain: list[Endpoint] = []
        claims: dict[tuple[str, str, str], dict[str, str]] = {}
        txt_names: set[str] = set()
        txt_keys: set[tuple[str, str]] = set()
        for r in provider_records:
            if r.record_type != TXT or not r.targets:
                if r.record_type != TXT:
                    plain.append(r)
                continue
            try:
                labels = parse_labels(r.targets[0])
            except InvalidHeritage:
                plain.append(r)
                continue
            name, rtype = self.mapper.to_endpoint_name(r.dns_name)
            claims[(name, rtype, r.set_identifier)] = labels
            txt_names.add(normalize(r.dns_name))
            txt_keys.add((normalize(r.dns_name), r.set_identifier))
        self._existing_txt = frozenset(txt_keys)
        out = []
        for ep in plain:
            parts = normalize(ep.dns_name).split(".")
            if self.mapper.wildcard_replacement and parts[0] == "*":
                parts[0] = self.mapper.wildcard_replacement
            name = ".".join(parts)
            labels = claims.get((name, ep.record_type, ep.set_identifier))
            if labels is None and ep.record_type != AAAA:
                labels = claims.get((name, "", ep.set_identifier))  # old format: no type in the name
            if labels:
                ep = ep.with_labels(**labels)
            if txt_names and ep.labels.get(OWNER) == self.owner and ep.record_type in self.managed:
                if normalize(self.mapper.to_txt_name(ep.dns_name, ep.record_type)) not in txt_names:
                    ep = ep.with_prop("txt/force-update", "true")
            out.append(ep)
        return out

    def txt_for(self, ep: Endpoint) -> Endpoint:
        labels = dict(ep.labels)
        labels.pop(OWNED_RECORD, None)
        txt = Endpoint(
            self.mapper.to_txt_name(ep.dns_name, ep.record_type), TXT, (serialize_labels(labels),),
            0, ep.set_identifier, {OWNED_RECORD: ep.dns_name}, ep.provider_specific,
        )
        return txt

    def apply(self, changes: Changes) -> Changes:
        """The changes with the registry's TXT records added (creates are labelled ours; updates
        and deletes of records we do not own are dropped)."""
        mine = lambda eps: [e for e in eps if e.owned_by(self.owner)]  # noqa: E731
        create = [e.with_labels(**{OWNER: self.owner}) for e in changes.create]
        update_old, update_new, delete = mine(changes.update_old), mine(changes.update_new), mine(changes.delete)
        out = Changes(
            create=create + [t for t in map(self.txt_for, create) if (normalize(t.dns_name), t.set_identifier) not in self._existing_txt],
            update_old=update_old + [self.txt_for(e) for e in update_old],
            update_new=update_new + [self.txt_for(e) for e in update_new],
            delete=delete + [self.txt_for(e) for e in delete],
        )
        return out


def strip_props(ep: Endpoint, *names: str) -> Endpoint:
    return replace(ep, provider_specific=tuple((k, v) for k, v in ep.provider_specific if k not in names))
