"""external-dns's sources over loaded manifests, and instances read from HelmRelease values."""

from __future__ import annotations

from pathlib import Path

import pytest

from homeplane.externaldns.config import instance_from_values, instances, resolve_env
from homeplane.api.selectors import parse_selector, selector_matches
from homeplane.externaldns.sources import SourceInput, desired_endpoints, matching_host
from homeplane.pipeline import Inputs, run_pipeline
from tests.externaldns import manifests as m

A = "external-dns.alpha.kubernetes.io/"


def _records(tmp_path: Path, docs: str, **values) -> set[tuple[str, str, str, int]]:
    repo = m.write(tmp_path / "repo", {"gw.yaml": m.GATEWAYS, "x.yaml": docs})
    result = run_pipeline(Inputs(paths=(repo,)))
    inst = instance_from_values("edns", "network", {"provider": {"name": "rfc2136"}, "sources": ["gateway-httproute", "service", "crd"], **values})
    eps, problems = desired_endpoints(inst, SourceInput.from_result(result))
    assert not problems
    return {(e.dns_name, e.record_type, ",".join(e.targets), e.ttl) for e in eps}


def test_route_hostnames_listener_narrowing_and_targets(tmp_path):
    docs = (
        m.route("wild", "default", "envoy-internal", ['"*.apps.home.example"'])  # narrowed by nothing: the listener is *.home.example
        + m.route("nohost", "default", "envoy-internal", None)  # takes the listener's hostname
        + m.route("other", "default", "envoy-internal", ["app.elsewhere.example"])  # no match with *.home.example
        + m.route("ann", "default", "envoy-external", ["a.home.example"], {A + "hostname": "b.home.example,c.home.example", A + "ttl": "1m"})
    )
    recs = _records(tmp_path, docs)
    assert ("*.apps.home.example", "A", "192.168.42.121", 0) in recs
    assert ("*.home.example", "A", "192.168.42.121", 0) in recs
    assert not any(r[0] == "app.elsewhere.example" for r in recs)
    for h in ("a", "b", "c"):
        assert (f"{h}.home.example", "CNAME", "external.home.example", 60) in recs


def test_controller_annotation_hostname_source_and_unaccepted_routes(tmp_path):
    docs = (
        m.route("off", "default", "envoy-internal", ["off.home.example"], {A + "controller": "none"})
        + m.route("dns", "default", "envoy-internal", ["on.home.example"], {A + "controller": "dns-controller"})
        + m.route("only", "default", "envoy-internal", ["spec.home.example"], {A + "hostname": "ann.home.example", A + "gateway-hostname-source": "annotation-only"})
        + m.route("lost", "default", "no-such-gateway", ["lost.home.example"])
        + m.route("same", "default", "envoy-external", ["same.home.example"], section="http")  # http allows Same namespace only
    )
    names = {r[0] for r in _records(tmp_path, docs)}
    assert "off.home.example" not in names and "on.home.example" in names
    assert "ann.home.example" in names and "spec.home.example" not in names
    assert "lost.home.example" not in names and "same.home.example" not in names


def test_filters(tmp_path):
    docs = (
        m.route("a", "default", "envoy-internal", ["a.home.example"], {"team": "x"})
        + m.route("b", "other", "envoy-internal", ["b.home.example"])
    )
    assert {r[0] for r in _records(tmp_path, docs, annotationFilter="team=x")} == {"a.home.example"}
    assert {r[0] for r in _records(tmp_path / "2", docs, namespaced=True, sourceNamespace="other")} == {"b.home.example"}
    ext = _records(tmp_path / "3", docs + m.route("e", "default", "envoy-external", ["e.home.example"]),
                   extraArgs=["--gateway-name=envoy-external"])
    assert {r[0] for r in ext if r[1] == "CNAME"} == {"e.home.example"}
    assert selector_matches(parse_selector("a=b,c!=d,e in (x, y),!f,g"), {"a": "b", "e": "y", "g": "1"})
    assert not selector_matches(parse_selector("a notin (b)"), {"a": "b"})
    with pytest.raises(ValueError):
        parse_selector("a=(")


def test_service_and_crd_sources(tmp_path):
    docs = f"""
---
apiVersion: v1
kind: Service
metadata:
  name: smtp
  namespace: default
  annotations: {{{A}hostname: smtp.home.example}}
spec: {{type: LoadBalancer, ports: [{{port: 25}}]}}
---
apiVersion: v1
kind: Service
metadata:
  name: pinned
  namespace: default
  annotations: {{{A}hostname: pinned.home.example, {A}target: 203.0.113.9}}
spec: {{type: LoadBalancer, ports: [{{port: 25}}]}}
---
apiVersion: v1
kind: Service
metadata:
  name: inner
  namespace: default
  annotations: {{{A}hostname: inner.home.example, {A}internal-hostname: inner-int.home.example}}
spec: {{clusterIP: 10.43.0.50, ports: [{{port: 80}}]}}
---
apiVersion: v1
kind: Service
metadata:
  name: alias
  namespace: default
  annotations: {{{A}hostname: alias.home.example}}
spec: {{type: ExternalName, externalName: target.example.net}}
---
apiVersion: externaldns.k8s.io/v1alpha1
kind: DNSEndpoint
metadata: {{name: extra, namespace: network}}
spec:
  endpoints:
    - {{dnsName: txt.home.example, recordType: TXT, targets: ["hello"]}}
    - {{dnsName: v6.home.example, recordType: AAAA, targets: ["2001:db8::1"], recordTTL: 120}}
"""
    recs = _records(tmp_path, docs)
    smtp = next(r for r in recs if r[0] == "smtp.home.example")
    assert smtp[1] == "A" and smtp[2].startswith("192.168.42.")  # what LB IPAM gave it
    assert ("pinned.home.example", "A", "203.0.113.9", 0) in recs
    assert ("inner-int.home.example", "A", "10.43.0.50", 0) in recs
    assert not any(r[0] == "inner.home.example" for r in recs)  # ClusterIP: only with --publish-internal-services
    assert ("alias.home.example", "CNAME", "target.example.net", 0) in recs
    assert ("v6.home.example", "AAAA", "2001:db8::1", 120) in recs
    assert ("txt.home.example", "TXT", "hello", 0) in recs  # the source gives it; the plan manages A/AAAA/CNAME only
    inner = _records(tmp_path / "2", docs, extraArgs=["--publish-internal-services"])
    assert ("inner.home.example", "A", "10.43.0.50", 0) in inner


def test_matching_host():
    assert matching_host("", "a.example.com") == "a.example.com"
    assert matching_host("*.example.com", "a.example.com") == "a.example.com"
    assert matching_host("a.example.com", "*.example.com") == "a.example.com"
    assert matching_host("*.example.com", "*.example.com") == "*.example.com"
    assert matching_host("a.example.com", "b.example.com") is None
    assert matching_host("", "10.0.0.1") is None and matching_host("", "Bad_Name!") is None


def test_instance_from_chart_values():
    inst = instance_from_values("dns", "network", {
        "provider": "cloudflare", "interval": "5m", "txtSuffix": "-owner", "domainFilters": ["a.example"],
        "excludeDomains": ["b.a.example"], "extraArgs": {"cloudflare-proxied": True, "zone-id-filter": ["$(ZONE)"], "txt-cache-interval": None, "frobnicate": 1},
        "env": [{"name": "ZONE", "value": "abc"}, {"name": "EXTERNAL_DNS_TXT_OWNER_ID", "value": "from-env"}],
    })
    assert inst.provider == "cloudflare" and inst.interval == 300 and inst.policy == "upsert-only"  # the chart's default policy
    assert inst.sources == ("service", "ingress")  # the chart's default sources
    assert inst.txt_suffix == "-owner" and inst.owner == "from-env"
    assert inst.flag_bool("cloudflare-proxied") and inst.flag_list("zone-id-filter") == ("abc",)
    assert any("--frobnicate" in p for p in inst.problems) and any("--txt-cache-interval has no value" in p for p in inst.problems)
    # the chart's default sources include ingress, which homeplane cannot read: syncing would delete
    # what ingresses published, so the instance plans but changes nothing
    assert any("'ingress' is not supported" in f for f in inst.fatal)
    split = instance_from_values("dns", "network", {"provider": "rfc2136", "sources": ["crd"],
                                                     "extraArgs": ["--txt-owner-id", "k8s-main", "--rfc2136-zone", "home.example", "--events", "stray"]})
    assert split.owner == "k8s-main" and split.flag_list("rfc2136-zone") == ("home.example",) and split.events
    assert split.problems == ("the argument after --events is not a flag (its value is not shown)",)
    leak = instance_from_values("dns", "network", {"provider": "rfc2136", "sources": ["crd"],
                                                    "extraArgs": ["--rfc2136-tsig-secret", "S3CR3T", "stray"]})
    assert leak.flag("rfc2136-tsig-secret") == "S3CR3T" and "S3CR3T" not in str(leak.problems)
    bad = instance_from_values("dns", "network", {"provider": "aws", "sources": ["crd"], "labelFilter": "a=(",
                                                   "env": [{"name": "X", "valueFrom": "oops"}], "registry": "noop"})
    assert len(bad.fatal) == 2 and bad.env[0].secret is None
    assert inst.domain_filter.match("x.a.example") and not inst.domain_filter.match("x.b.a.example")
    bad = instance_from_values("dns", "network", {"provider": {"name": "aws"}, "policy": "yolo", "interval": "soon"})
    assert bad.policy == "upsert-only" and bad.interval == 60 and len(bad.problems) == 2


def test_credentials_resolve_from_secrets_vars_and_environment_and_never_print(tmp_path):
    hr = m.external_dns("cf", "cloudflare", ["crd"], "o", "", [], env="""
    env:
      - {name: CF_API_TOKEN, valueFrom: {secretKeyRef: {name: cf-secret, key: token}}}
      - {name: CF_API_EMAIL, valueFrom: {secretKeyRef: {name: missing, key: email}}}
      - {name: CF_API_KEY, valueFrom: {secretKeyRef: {name: missing, key: key}}}""")
    secret = "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: cf-secret, namespace: network}\ndata: {token: c2VjcmV0LXRva2Vu}\n"
    repo = m.write(tmp_path / "repo", {"hr.yaml": hr + secret})
    result = run_pipeline(Inputs(paths=(repo,)))
    (inst,) = instances(result.load.objects)
    env = resolve_env(inst, result.load.objects, {"CF_API_EMAIL": "me@example.com"}, environ={"CF_API_KEY": "k"})
    assert env == {"CF_API_TOKEN": "secret-token", "CF_API_EMAIL": "me@example.com", "CF_API_KEY": "k"}
    assert "secret-token" not in repr(inst) and "secret-token" not in str(inst.to_json())


def test_sops_encrypted_secrets_give_way_to_supplied_values(tmp_path):
    hr = m.external_dns("cf", "cloudflare", ["crd"], "o", "", [], env="""
    env:
      - {name: CF_API_TOKEN, valueFrom: {secretKeyRef: {name: cf-secret, key: token}}}""")
    enc = "\n---\napiVersion: v1\nkind: Secret\nmetadata: {name: cf-secret, namespace: network}\n" \
          "stringData: {token: 'ENC[AES256_GCM,data:abc,iv:x,tag:y,type:str]'}\nsops: {age: [], version: 3.9.0}\n"
    repo = m.write(tmp_path / "repo", {"hr.yaml": hr + enc})
    result = run_pipeline(Inputs(paths=(repo,)))
    (inst,) = instances(result.load.objects)
    assert resolve_env(inst, result.load.objects, {"CF_API_TOKEN": "plain"}, environ={}) == {"CF_API_TOKEN": "plain"}


def test_malformed_values_do_not_crash(tmp_path):
    for values in ({"provider": {"name": "webhook", "webhook": "oops"}, "env": "nope", "sources": "service"},
                   {"provider": {"name": "cloudflare"}, "env": [{"name": "A", "valueFrom": {"secretKeyRef": "x"}}],
                    "domainFilters": "home.example", "extraArgs": {"a": {"b": 1}}}):
        inst = instance_from_values("x", "network", values)
        assert inst.id == "network/x"
    assert instance_from_values("x", "n", {"provider": "aws", "sources": "service"}).sources == ("service",)
