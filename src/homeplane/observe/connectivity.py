"""``homeplane connectivity test``: a running instance tested end to end from outside, as
``cilium connectivity test`` does for a cluster.

From its ``/status`` it learns the routes, where each Gateway listens, the DNS server and the
Services; then it sends real traffic: one request per route and listener it is attached to (the
route's hostname as Host and SNI, the first match's path, method and headers), a DNS query for
every route hostname in a gateway zone and every Service's cluster name, and a TCP connection to
every LoadBalancer IP when a Service data path runs. Each request carries a token in its query, so
its flow can be found: a failure is explained with the flow's verdict, drop reason and Envoy
response flags (``503 UH: no healthy upstream``), not just a status code.
"""

from __future__ import annotations

import json
import secrets
import socket
import ssl
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

PASS, FAIL, SKIP = "pass", "fail", "skip"


@dataclass
class Check:
    kind: str  # route, dns, service
    name: str
    target: str
    result: str = PASS
    detail: str = ""

    def to_json(self) -> dict[str, Any]:
        return {"kind": self.kind, "name": self.name, "target": self.target, "result": self.result, "detail": self.detail}


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if c.result == FAIL]

    def render(self) -> list[str]:
        mark = {PASS: "[ok]  ", FAIL: "[FAIL]", SKIP: "[skip]"}
        out = [f"{mark[c.result]} {c.kind:<8} {c.name}: {c.target}" + (f" — {c.detail}" if c.detail else "") for c in self.checks]
        passed = sum(1 for c in self.checks if c.result == PASS)
        skipped = sum(1 for c in self.checks if c.result == SKIP)
        out.append(f"{passed} passed, {len(self.failed)} failed, {skipped} skipped")
        return out


def _get_json(admin: str, path: str, timeout: float = 10) -> Any:
    with urllib.request.urlopen(f"http://{admin}{path}", timeout=timeout) as r:
        return json.loads(r.read())


def _example_host(pattern: str) -> str:
    return f"connectivity-check{pattern[1:]}" if pattern.startswith("*") else pattern


def _request_plan(route: dict[str, Any]) -> tuple[str, str, list[tuple[str, str]]] | None:
    """Method, path and headers that the route's first match a request can be made for takes
    (None: every match needs a path, header or query value matched by a regular expression)."""
    for rule in route.get("rules") or ():
        for m in rule.get("matches") or ():
            path = m.get("path") or {}
            needs = [x for x in (m.get("headers") or []) + (m.get("queryParams") or []) if x.get("type", "Exact") != "Exact"]
            if path.get("type") == "RegularExpression" or needs:
                continue
            headers = [(h["name"], h["value"]) for h in m.get("headers") or ()]
            query = "&".join(f"{urllib.parse.quote(q['name'], safe='')}={urllib.parse.quote(q['value'], safe='')}"
                             for q in m.get("queryParams") or ())
            return m.get("method") or "GET", (path.get("value") or "/") + (f"?{query}" if query else ""), headers
    return None


def _listeners_for(route: dict[str, Any], bound: list[dict[str, Any]]) -> Iterable[tuple[dict[str, Any], dict[str, Any]]]:
    for parent in route.get("parents") or ():
        if not parent.get("accepted"):
            continue
        for b in bound:
            if b.get("gateway") != parent.get("gateway") or b.get("protocol") not in ("HTTP", "HTTPS"):
                continue
            if parent.get("sectionName") and parent["sectionName"] not in (b.get("listeners") or ()):
                continue
            if parent.get("port") and parent["port"] != b.get("port"):
                continue
            yield parent, b


def http_request(address: str, port: int, tls: bool, host: str, method: str, target: str, headers: list[tuple[str, str]],
                 timeout: float) -> tuple[int | None, str]:
    """(status, problem): one HTTP/1.1 request on a new connection, SNI and Host the route's name."""
    try:
        sock = socket.create_connection((address, port), timeout=timeout)
    except OSError as e:
        return None, f"connection to {address}:{port} failed: {e.strerror or e}"
    try:
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE  # the certificate is reported by the trace; here: does the route answer
            ctx.set_alpn_protocols(["http/1.1"])
            try:
                sock = ctx.wrap_socket(sock, server_hostname=host)
            except (ssl.SSLError, OSError) as e:
                return None, f"TLS handshake with SNI {host} failed: {e}"
        head = f"{method} {target} HTTP/1.1\r\nHost: {host}\r\nUser-Agent: homeplane-connectivity-test\r\nConnection: close\r\n"
        head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
        sock.sendall(head.encode("latin-1"))
        data = b""
        while b"\r\n" not in data and len(data) < 8192:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        line = data.split(b"\r\n", 1)[0].split()
        if len(line) < 2 or not line[1].isdigit():
            return None, "the connection closed without an HTTP answer"
        return int(line[1]), ""
    except OSError as e:
        return None, f"{e.strerror or e}"
    finally:
        sock.close()


def _why(flows: list[dict[str, Any]], token: str) -> dict[str, Any] | None:
    for w in flows:
        f = w["flow"]
        if token in ((f.get("l7") or {}).get("http") or {}).get("url", ""):
            return f
    return None


def _explain(flow: dict[str, Any] | None) -> str:
    """``ERROR, UF: upstream connect error … (Service apps/dead)`` from a request's flow."""
    if flow is None:
        return ""
    hp = flow.get("homeplane") or {}
    text = flow["verdict"] + (f" {flow['drop_reason_desc']}" if flow.get("drop_reason_desc") else "")
    if hp.get("response_flags") not in (None, "-"):
        text += f", {hp['response_flags']}"
    if hp.get("error"):
        text += f": {hp['error']}"
    svc = flow.get("destination_service")
    return text + (f" (Service {svc['namespace']}/{svc['name']})" if svc else "")


def check_routes(admin: str, status: dict[str, Any], timeout: float, report: Report) -> None:
    bound = (status.get("runtime") or {}).get("listeners") or []
    for route in status.get("routes") or ():
        name = f"{route['namespace']}/{route['name']}"
        targets = list(_listeners_for(route, bound))
        if not targets:
            report.checks.append(Check("route", name, "-", SKIP, "attached to no listener served here"))
            continue
        plan = _request_plan(route)
        if plan is None:
            report.checks.append(Check("route", name, "-", SKIP, "every match needs a value matched by a regular expression"))
            continue
        method, path, headers = plan
        hosts = route.get("hostnames") or []
        for parent, b in targets:
            host = _example_host(hosts[0]) if hosts else b["address"]
            token = secrets.token_hex(6)
            sep = "&" if "?" in path else "?"
            target = f"{path}{sep}homeplane-connectivity={token}"
            tls = b["protocol"] == "HTTPS"
            url = f"{'https' if tls else 'http'}://{host}:{b['boundPort']}{path}"
            try:
                before = _get_json(admin, "/api/v1/flows?last=0")["next"]
            except Exception:
                before = None
            status_code, problem = http_request(b["address"], b["boundPort"], tls, host, method, target, headers, timeout)
            flow = None
            if before is not None and status_code is not None:
                for _ in range(20):  # the flow is written when the answer is finished
                    flow = _why(_get_json(admin, f"/api/v1/flows?after={before}&protocol=http")["flows"], token)
                    if flow is not None:
                        break
                    time.sleep(0.05)
            if status_code is None:
                report.checks.append(Check("route", name, f"{method} {url}", FAIL, problem))
            elif flow is not None and flow["verdict"] != "FORWARDED":
                report.checks.append(Check("route", name, f"{method} {url}", FAIL, f"{status_code} {_explain(flow)}"))
            elif flow is None and (status_code >= 500 or status_code in (400, 404)):
                # no flow to tell who answered (--flows 0): what the gateway itself answers is a failure
                report.checks.append(Check("route", name, f"{method} {url}", FAIL,
                                           f"{status_code} (no flows kept here to tell whether the gateway or the backend answered)"))
            else:
                report.checks.append(Check("route", name, f"{method} {url}", PASS, f"{status_code}"))


def check_dns(status: dict[str, Any], timeout: float, report: Report) -> None:
    import dns.exception
    import dns.message
    import dns.query
    import dns.rcode

    rt = status.get("runtime") or {}
    d = rt.get("dns")
    if not d or not d.get("listen"):
        report.checks.append(Check("dns", "homeplane DNS", "-", SKIP, "not serving DNS"))
        return
    host, _, port = d["listen"][0].rpartition(":")
    server = host.strip("[]")
    if server in ("0.0.0.0", "::"):
        server = "127.0.0.1" if server == "0.0.0.0" else "::1"
    by_gateway = {}
    for b in rt.get("listeners") or ():
        by_gateway.setdefault(b["gateway"], set()).add(b["address"])
    wanted: list[tuple[str, str, set[str]]] = []
    domains = [x.rstrip(".").lower() for x in d.get("gatewayDomains") or ()]
    for route in status.get("routes") or ():
        for h in route.get("hostnames") or ():
            name = _example_host(h.lower())
            if any(name == z or name.endswith("." + z) for z in domains):
                addrs = set().union(*(by_gateway.get(p["gateway"], set()) for p in route.get("parents") or () if p.get("accepted")))
                wanted.append((f"route {route['namespace']}/{route['name']}", name, addrs))
    cluster = d.get("clusterDomain") or "cluster.local"
    for svc in status.get("services") or ():
        if svc.get("clusterIP") and svc.get("type") != "ExternalName":
            wanted.append((f"Service {svc['namespace']}/{svc['name']}", f"{svc['name']}.{svc['namespace']}.svc.{cluster}", {svc["clusterIP"]}))
    for what, name, expected in wanted:
        try:
            msg = dns.query.udp(dns.message.make_query(name, "A"), server, port=int(port), timeout=timeout)
        except (dns.exception.DNSException, OSError) as e:
            report.checks.append(Check("dns", what, f"{name} A @{d['listen'][0]}", FAIL, f"no answer: {e}"))
            continue
        got = {rd.to_text() for rrset in msg.answer for rd in rrset if rrset.rdtype == 1}
        if msg.rcode() != 0 or not got:
            report.checks.append(Check("dns", what, f"{name} A", FAIL, f"{dns.rcode.to_text(msg.rcode())}, no address"))
        elif expected and not got & expected:
            report.checks.append(Check("dns", what, f"{name} A", FAIL, f"answered {', '.join(sorted(got))}, expected {', '.join(sorted(expected))}"))
        else:
            report.checks.append(Check("dns", what, f"{name} A", PASS, ", ".join(sorted(got))))


def check_services(status: dict[str, Any], timeout: float, report: Report) -> None:
    mode = ((status.get("runtime") or {}).get("l4") or {}).get("mode", "off")
    for svc in status.get("services") or ():
        ips = svc.get("loadBalancerIPs") or []
        if not ips:
            continue
        name = f"{svc['namespace']}/{svc['name']}"
        for ip in ips:
            for p in svc.get("ports") or ():
                if (p.get("protocol") or "TCP") != "TCP":
                    continue
                target = f"tcp {ip}:{p['port']}"
                if mode == "off":
                    report.checks.append(Check("service", name, target, SKIP, "no Service data path here (--l4 off)"))
                    continue
                try:
                    socket.create_connection((ip, p["port"]), timeout=timeout).close()
                    report.checks.append(Check("service", name, target, PASS, "connected"))
                except OSError as e:
                    report.checks.append(Check("service", name, target, FAIL, f"{e.strerror or e}"))


def run(admin: str, timeout: float = 5.0, only: Callable[[str], bool] = lambda _k: True) -> Report:
    status = _get_json(admin, "/status")
    report = Report()
    if only("route"):
        check_routes(admin, status, timeout, report)
    if only("dns"):
        check_dns(status, timeout, report)
    if only("service"):
        check_services(status, timeout, report)
    return report

