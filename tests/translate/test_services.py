"""Services -> endpoints: EndpointSlices, Endpoints, selectorless Services, ExternalName, Backends."""

from __future__ import annotations

from tests.conftest import translate_text


def test_endpointslices_with_named_ports_and_readiness() -> None:
    _, tr = translate_text(
        """
apiVersion: v1
kind: Service
metadata: {name: api, namespace: apps}
spec:
  selector: {app: api}
  ports:
    - {name: http, port: 80, targetPort: http}
    - {name: metrics, port: 9090}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: api-abc, namespace: apps, labels: {kubernetes.io/service-name: api}}
addressType: IPv4
ports: [{name: http, port: 8080}, {name: metrics, port: 9091}]
endpoints:
  - addresses: [10.0.0.1]
  - addresses: [10.0.0.2]
    conditions: {ready: false, serving: true, terminating: true}
  - addresses: [10.0.0.3]
    hostname: api-2
    conditions: {ready: true}
"""
    )
    svc = tr.snapshot.service("apps", "api")
    assert svc.endpoint_source == "EndpointSlice"
    http = tr.snapshot.pools["service/apps/api:80"]
    assert [(e.address, e.port, e.ready) for e in http.endpoints] == [
        ("10.0.0.1", 8080, True),
        ("10.0.0.2", 8080, False),
        ("10.0.0.3", 8080, True),
    ]
    assert http.endpoints[2].hostname == "api-2"
    assert {e.port for e in tr.snapshot.pools["service/apps/api:9090"].endpoints} == {9091}


def test_selectorless_service_with_endpoints_points_outside() -> None:
    _, tr = translate_text(
        """
apiVersion: v1
kind: Service
metadata: {name: home-assistant, namespace: home}
spec:
  ports: [{port: 8123}]
---
apiVersion: v1
kind: Endpoints
metadata: {name: home-assistant, namespace: home}
subsets:
  - addresses: [{ip: 192.0.2.10}]
    ports: [{port: 8123}]
"""
    )
    pool = tr.snapshot.pools["service/home/home-assistant:8123"]
    assert [(e.address, e.port) for e in pool.endpoints] == [("192.0.2.10", 8123)]
    assert tr.snapshot.service("home", "home-assistant").selector is None


def test_service_without_endpoints_is_listed_with_none() -> None:
    _, tr = translate_text(
        "apiVersion: v1\nkind: Service\nmetadata: {name: lonely, namespace: a}\nspec:\n  selector: {app: x}\n  ports: [{port: 80}]\n"
    )
    assert tr.snapshot.pools["service/a/lonely:80"].endpoints == ()
    assert tr.snapshot.service("a", "lonely").endpoint_source == "none"


def test_external_name_and_backend() -> None:
    _, tr = translate_text(
        """
apiVersion: v1
kind: Service
metadata: {name: ext, namespace: a}
spec: {type: ExternalName, externalName: nas.lan, ports: [{port: 443}]}
---
apiVersion: gateway.envoyproxy.io/v1alpha1
kind: Backend
metadata: {name: ha, namespace: a}
spec:
  endpoints:
    - fqdn: {hostname: ha.lan, port: 8123}
    - ip: {address: 192.0.2.5, port: 8123}
"""
    )
    ext = tr.snapshot.pools["service/a/ext:443"].endpoints[0]
    assert (ext.address, ext.port, ext.fqdn) == ("nas.lan", 443, True)
    be = tr.snapshot.pools["backend/a/ha"].endpoints
    assert [(e.address, e.fqdn) for e in be] == [("ha.lan", True), ("192.0.2.5", False)]


def test_loadbalancer_requested_ips() -> None:
    _, tr = translate_text(
        """
apiVersion: v1
kind: Service
metadata:
  name: lb
  namespace: a
  annotations: {lbipam.cilium.io/ips: "192.0.2.20,192.0.2.21"}
spec: {type: LoadBalancer, ports: [{port: 53, protocol: UDP}]}
"""
    )
    svc = tr.snapshot.service("a", "lb")
    assert svc.requested_lb_ips == ("192.0.2.20", "192.0.2.21")
    assert svc.external_traffic_policy == "Cluster"
