"""The TXT registry's names and texts, and the planner's decisions, as external-dns documents them."""

from __future__ import annotations

import pytest

from homeplane.externaldns.endpoint import DomainFilter, Endpoint, merge_endpoints, same_targets, targets_less
from homeplane.externaldns.plan import Changes, calculate
from homeplane.externaldns.registry import InvalidHeritage, NameMapper, TXTRegistry, parse_labels, serialize_labels


@pytest.mark.parametrize("prefix,suffix,wild,name,rtype,txt", [
    ("", "", "", "app.example.com", "A", "a-app.example.com"),
    ("", "", "", "app.example.com", "CNAME", "cname-app.example.com"),
    ("", "", "", "example.com", "A", "a-example.com"),
    ("txt.", "", "", "app.example.com", "A", "txt.a-app.example.com"),
    ("k8s.%{record_type}-", "", "", "app.example.com", "AAAA", "k8s.aaaa-app.example.com"),
    ("k8s.main.%{record_type}-", "", "", "app.example.com", "CNAME", "k8s.main.cname-app.example.com"),
    ("", "-txt", "", "app.example.com", "A", "a-app-txt.example.com"),
    ("", ".%{record_type}", "", "app.example.com", "A", "app.a.example.com"),
    ("", "", "wild", "*.example.com", "A", "a-wild.example.com"),
    ("", "", "", "*.example.com", "CNAME", "cname-*.example.com"),
])
def test_txt_names_both_ways(prefix, suffix, wild, name, rtype, txt):
    m = NameMapper(prefix, suffix, wild)
    assert m.to_txt_name(name, rtype) == txt
    back = m.to_endpoint_name(txt)
    assert back == ((name if not wild else name.replace("*", wild)), rtype)


def test_old_format_names_are_read_without_a_type():
    assert NameMapper("txt.").to_endpoint_name("txt.app.example.com") == ("app.example.com", "")
    assert NameMapper().to_endpoint_name("app.example.com") == ("app.example.com", "")
    assert NameMapper("k8s.").to_endpoint_name("other.example.com") == ("", "")


def test_labels_text():
    text = serialize_labels({"resource": "httproute/default/app", "owner": "main"})
    assert text == '"heritage=external-dns,external-dns/owner=main,external-dns/resource=httproute/default/app"'
    assert parse_labels(text) == {"owner": "main", "resource": "httproute/default/app"}
    for bad in ('"v=spf1 -all"', '"heritage=someone-else,external-dns/owner=x"'):
        with pytest.raises(InvalidHeritage):
            parse_labels(bad)


def _reg(owner: str = "main", prefix: str = "k8s.%{record_type}-") -> TXTRegistry:
    return TXTRegistry(owner, NameMapper(prefix), ("A", "AAAA", "CNAME"))


def txt(name: str, owner: str, resource: str = "x/y/z") -> Endpoint:
    return Endpoint(name, "TXT", (serialize_labels({"owner": owner, "resource": resource}),))


def test_registry_labels_records_new_and_old_format_and_ignores_foreign_txt():
    reg = _reg()
    recs = reg.records([
        Endpoint("a.example.com", "A", ("10.0.0.1",)), txt("k8s.a-a.example.com", "main", "svc/ns/a"),
        Endpoint("b.example.com", "CNAME", ("x.example.com",)), txt("k8s.-b.example.com", "other"),  # old format: template dropped, no type
        Endpoint("c.example.com", "A", ("10.0.0.3",)),  # nobody's
        Endpoint("spf.example.com", "TXT", ('"v=spf1 -all"',)),  # not a registry record: stays a plain record
    ])
    by = {r.dns_name: r for r in recs}
    assert by["a.example.com"].labels == {"owner": "main", "resource": "svc/ns/a"}
    assert by["b.example.com"].labels["owner"] == "other"
    assert by["c.example.com"].labels == {}
    assert "spf.example.com" in by and "k8s.a-a.example.com" not in by


def test_registry_rewrites_a_missing_txt_of_an_owned_record():
    reg = _reg()
    recs = reg.records([Endpoint("a.example.com", "A", ("10.0.0.1",)), txt("k8s.-a.example.com", "main"),  # old name only
                        Endpoint("x.example.com", "A", ("10.0.0.2",)), txt("k8s.a-x.example.com", "main")])
    by = {r.dns_name: r for r in recs}
    assert by["a.example.com"].prop("txt/force-update") == "true"
    assert by["x.example.com"].prop("txt/force-update") is None
    ch = calculate(recs, [Endpoint("a.example.com", "A", ("10.0.0.1",)), Endpoint("x.example.com", "A", ("10.0.0.2",))], "main")
    out = reg.apply(ch)
    assert [e.dns_name for e in out.update_new] == ["a.example.com", "k8s.a-a.example.com"]


def test_registry_adds_txt_to_each_change_and_drops_foreign_updates():
    reg = _reg()
    reg.records([])
    mine = Endpoint("m.example.com", "A", ("1.1.1.1",), labels={"owner": "main", "resource": "r"})
    theirs = Endpoint("t.example.com", "A", ("2.2.2.2",), labels={"owner": "other"})
    out = reg.apply(Changes(create=[Endpoint("n.example.com", "CNAME", ("gw.example.com",), labels={"resource": "httproute/a/b"})],
                            delete=[mine, theirs]))
    assert [(e.dns_name, e.record_type) for e in out.create] == [("n.example.com", "CNAME"), ("k8s.cname-n.example.com", "TXT")]
    assert out.create[1].targets == ('"heritage=external-dns,external-dns/owner=main,external-dns/resource=httproute/a/b"',)
    assert [e.dns_name for e in out.delete] == ["m.example.com", "k8s.a-m.example.com"]


def ep(name: str, rtype: str, *targets: str, owner: str | None = "main", resource: str = "r", ttl: int = 0) -> Endpoint:
    labels = {"resource": resource} | ({"owner": owner} if owner is not None else {})
    return Endpoint(name, rtype, targets, ttl, "", labels)


def test_plan_create_update_delete_and_idempotence():
    current = [ep("keep.x", "A", "1.1.1.1"), ep("move.x", "A", "1.1.1.1"), ep("gone.x", "A", "3.3.3.3")]
    desired = [ep("keep.x", "A", "1.1.1.1", owner=None), ep("move.x", "A", "2.2.2.2", owner=None), ep("new.x", "CNAME", "gw.x", owner=None)]
    ch = calculate(current, desired, "main")
    assert [e.dns_name for e in ch.create] == ["new.x"]
    assert [(o.targets, n.targets, n.labels["owner"]) for o, n in zip(ch.update_old, ch.update_new)] == [(("1.1.1.1",), ("2.2.2.2",), "main")]
    assert [e.dns_name for e in ch.delete] == ["gone.x"]
    assert not calculate([ep("a.x", "A", "1.1.1.1", "1.1.1.2")], [ep("a.x", "A", "1.1.1.2", "1.1.1.1", owner=None)], "main")
    assert not calculate([ep("a.x", "A", "2001:db8::1")], [ep("a.x", "A", "2001:db8:0::1", owner=None)], "main")


def test_plan_policies():
    current = [ep("a.x", "A", "1.1.1.1"), ep("b.x", "A", "1.1.1.1")]
    desired = [ep("a.x", "A", "9.9.9.9", owner=None), ep("c.x", "A", "3.3.3.3", owner=None)]
    sync = calculate(current, desired, "main", "sync")
    assert (len(sync.create), len(sync.update_new), len(sync.delete)) == (1, 1, 1)
    upsert = calculate(current, desired, "main", "upsert-only")
    assert (len(upsert.create), len(upsert.update_new), len(upsert.delete)) == (1, 1, 0)
    create = calculate(current, desired, "main", "create-only")
    assert (len(create.create), len(create.update_new), len(create.delete)) == (1, 0, 0)


def test_plan_never_touches_what_others_own_or_nobody_owns():
    current = [ep("other.x", "A", "1.1.1.1", owner="other"), ep("manual.x", "A", "1.1.1.1", owner=None),
               ep("manual2.x", "CNAME", "elsewhere.x", owner=None)]
    desired = [ep("other.x", "A", "2.2.2.2", owner=None), ep("manual2.x", "A", "5.5.5.5", owner=None)]
    ch = calculate(current, desired, "main")
    # no update of other.x, no delete of manual.x, and no A created beside someone's CNAME
    assert not ch.update_new and not ch.delete and not ch.create


def test_plan_conflicts_as_external_dns_resolves_them():
    # a CNAME and an A want the same name: the A wins
    ch = calculate([], [ep("a.x", "CNAME", "gw.x", resource="route/1"), ep("a.x", "A", "1.1.1.1", resource="svc/2")], "main")
    assert [(e.record_type, e.targets) for e in ch.create] == [("A", ("1.1.1.1",))]
    # two candidates of one type: the least targets, addresses before names
    ch = calculate([], [ep("b.x", "A", "10.0.0.2", "10.0.0.3"), ep("b.x", "A", "10.0.0.9")], "main")
    assert ch.create[0].targets == ("10.0.0.9",)
    # the resource that holds a name keeps it
    cur = [ep("c.x", "A", "10.0.0.5", resource="svc/b")]
    ch = calculate(cur, [ep("c.x", "A", "10.0.0.1", resource="svc/a", owner=None), ep("c.x", "A", "10.0.0.5", resource="svc/b", owner=None)], "main")
    assert not ch
    assert targets_less(("1.2.3.4",), ("a.example",)) and targets_less(("10.0.0.9",), ("10.0.0.10",)) is True
    assert same_targets(("A.example",), ("a.example",))


def test_plan_ttl_and_domain_filter():
    cur = [ep("a.x", "A", "1.1.1.1", ttl=300)]
    assert not calculate(cur, [ep("a.x", "A", "1.1.1.1", owner=None)], "main")  # TTL not configured: not compared
    assert calculate(cur, [ep("a.x", "A", "1.1.1.1", owner=None, ttl=60)], "main").update_new[0].ttl == 60
    df = DomainFilter(["home.example"], ["private.home.example"])
    assert df.match("a.home.example") and df.match("home.example") and not df.match("ahome.example")
    assert not df.match("x.private.home.example") and not DomainFilter([".home.example"]).match("home.example")
    ch = calculate([], [ep("a.other.example", "A", "1.1.1.1"), ep("b.home.example", "A", "1.1.1.1")], "main", domain_filter=df)
    assert [e.dns_name for e in ch.create] == ["b.home.example"]


def test_merge_endpoints():
    merged = merge_endpoints([ep("a.x", "A", "1.1.1.2"), ep("a.x", "A", "1.1.1.1"), ep("a.x", "CNAME", "p.x"), ep("a.x", "CNAME", "q.x")])
    assert sorted((e.record_type, e.targets) for e in merged) == [("A", ("1.1.1.1", "1.1.1.2")), ("CNAME", ("p.x",)), ("CNAME", ("q.x",))]


def test_a_second_set_identifier_gets_its_own_txt():
    reg = _reg()
    reg.records([Endpoint("a.example.com", "A", ("1.1.1.1",), set_identifier="eu"),
                 Endpoint("k8s.a-a.example.com", "TXT", (serialize_labels({"owner": "main"}),), set_identifier="eu")])
    out = reg.apply(Changes(create=[Endpoint("a.example.com", "A", ("2.2.2.2",), set_identifier="us")]))
    assert [(e.record_type, e.set_identifier) for e in out.create] == [("A", "us"), ("TXT", "us")]
