from __future__ import annotations

import base64
import datetime
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from homeplane.translate import Translation
from homeplane.translate import snapshot as ir


@lru_cache(maxsize=None)
def tls_pair(*names: str) -> tuple[str, str]:
    """A self-signed certificate for names, as base64 data for a Secret."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0])])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in names]), critical=False)
        .sign(key, hashes.SHA256())
    )
    crt = cert.public_bytes(serialization.Encoding.PEM)
    k = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    return base64.b64encode(crt).decode(), base64.b64encode(k).decode()


def tls_secret(name: str, namespace: str, *names: str) -> str:
    crt, key = tls_pair(*names)
    return f"""
---
apiVersion: v1
kind: Secret
metadata: {{name: {name}, namespace: {namespace}}}
type: kubernetes.io/tls
data:
  tls.crt: {crt}
  tls.key: {key}
"""


BASE = """
---
apiVersion: v1
kind: Namespace
metadata: {name: network}
---
apiVersion: v1
kind: Namespace
metadata: {name: apps, labels: {expose: "yes"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: other}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: envoy}
spec:
  controllerName: gateway.envoyproxy.io/gatewayclass-controller
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: gw, namespace: network}
spec:
  gatewayClassName: envoy
  listeners:
    - name: http
      protocol: HTTP
      port: 80
      allowedRoutes:
        namespaces: {from: All}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: apps}
spec:
  ports:
    - {name: http, port: 80, targetPort: 8080}
---
apiVersion: v1
kind: Endpoints
metadata: {name: web, namespace: apps}
subsets:
  - addresses: [{ip: 10.0.0.1}]
    notReadyAddresses: [{ip: 10.0.0.2}]
    ports: [{name: http, port: 8080}]
"""


def parent(tr: Translation, ns: str, name: str, index: int = 0) -> dict[str, dict]:
    """The conditions (by type) of one parent of an HTTPRoute."""
    s = tr.status[("gateway.networking.k8s.io", "HTTPRoute", ns, name)]
    return {c["type"]: c for c in s["parents"][index]["conditions"]}


def listener_status(tr: Translation, ns: str, name: str, listener: str) -> dict[str, dict]:
    s = tr.status[("gateway.networking.k8s.io", "Gateway", ns, name)]
    ls = next(x for x in s["listeners"] if x["name"] == listener)
    return {"attachedRoutes": ls["attachedRoutes"], **{c["type"]: c for c in ls["conditions"]}}


def rules_of(tr: Translation, gw: str, listener: str, host: str) -> tuple[ir.RouteRule, ...]:
    ns, name = gw.split("/")
    g = tr.snapshot.gateway(ns, name)
    assert g is not None
    ls = next(x for x in g.listeners if x.name == listener)
    for vh in ls.vhosts:
        if vh.hostname == host:
            return vh.rules
    raise AssertionError(f"no vhost {host} on {gw}/{listener}: {[v.hostname for v in ls.vhosts]}")
