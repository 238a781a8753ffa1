"""Flux's notification ``Receiver``: a push to the Git host reconciles at once.

Each Receiver in the manifests answers at ``/hook/<sha256(token + name + namespace)>`` (the token
is the ``token`` key of its ``secretRef`` Secret — from the manifests, else the variable ``token``
from ``--vars``/``--set``). Types: ``generic`` (the secret path is the check), ``generic-hmac``
(``X-Signature: sha256=<hmac of the body>``, sha1/sha512 too), ``github`` (``X-Hub-Signature-256``
or ``X-Hub-Signature``, and ``X-GitHub-Event`` among ``events``; ``ping`` is acknowledged),
``gitlab`` (``X-Gitlab-Token`` equal to the token, ``X-Gitlab-Event`` among ``events``).
A Receiver whose resources name a GitRepository makes homeplane fetch now.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import dataclass, field
from typing import Any, Mapping

from homeplane.api.secrets import secret_values

TYPES = ("generic", "generic-hmac", "github", "gitlab")


@dataclass(frozen=True)
class Receiver:
    namespace: str
    name: str
    type: str
    events: tuple[str, ...]
    token: str = field(repr=False)
    fetches: bool  # its resources include a GitRepository

    @property
    def path(self) -> str:
        return "/hook/" + hashlib.sha256((self.token + self.name + self.namespace).encode()).hexdigest()


def receivers(objects: list[Any], variables: Mapping[str, str] | None = None,
              environ: Mapping[str, str] | None = None) -> tuple[list[Receiver], list[str]]:
    """The Receivers that can be served, and why others cannot."""
    environ = os.environ if environ is None else environ
    secrets = {(o.namespace or "default", o.name): secret_values(o.raw) for o in objects if o.kind == "Secret"}
    out, problems = [], []
    for o in objects:
        if o.kind != "Receiver" or not o.group.startswith("notification.toolkit.fluxcd.io"):
            continue
        spec = o.raw.get("spec") if isinstance(o.raw.get("spec"), dict) else {}
        ns = o.namespace or "flux-system"
        typ = str(spec.get("type") or "")
        if typ not in TYPES:
            problems.append(f"Receiver {ns}/{o.name}: type {typ!r} is not served (homeplane serves {', '.join(TYPES)})")
            continue
        ref = spec.get("secretRef") if isinstance(spec.get("secretRef"), dict) else {}
        token = secrets.get((ns, str(ref.get("name") or "")), {}).get("token") or (variables or {}).get("token") or environ.get("token", "")
        if not token:
            problems.append(f"Receiver {ns}/{o.name}: the token (Secret {ns}/{ref.get('name')} key token) is not in the manifests or the variables")
            continue
        resources = spec.get("resources") if isinstance(spec.get("resources"), list) else []
        fetches = any(isinstance(r, dict) and r.get("kind") in ("GitRepository", "Kustomization") for r in resources)
        events = tuple(str(e) for e in spec.get("events") or []) if isinstance(spec.get("events"), list) else ()
        out.append(Receiver(ns, o.name, typ, events, token, fetches))
    return out, problems


def _hmac_ok(token: str, body: bytes, signature: str) -> bool:
    algo, _, digest = signature.partition("=")
    fn = {"sha1": hashlib.sha1, "sha256": hashlib.sha256, "sha512": hashlib.sha512}.get(algo.lower())
    return fn is not None and hmac.compare_digest(hmac.new(token.encode(), body, fn).hexdigest().encode(),
                                                  digest.strip().lower().encode(errors="replace"))


def verify(r: Receiver, headers: Mapping[str, str], body: bytes) -> tuple[int, bool, str]:
    """(HTTP status, whether to reconcile, message) for a request to the Receiver's path."""
    h = {k.lower(): v for k, v in headers.items()}
    if r.type == "generic-hmac":
        if not _hmac_ok(r.token, body, h.get("x-signature", "")):
            return 401, False, "the X-Signature HMAC does not match"
    elif r.type == "github":
        sig = h.get("x-hub-signature-256") or h.get("x-hub-signature", "")
        if not _hmac_ok(r.token, body, sig):
            return 401, False, "the GitHub signature does not match"
        event = h.get("x-github-event", "")
        if event == "ping":
            return 200, False, "pong"
        if r.events and event not in r.events:
            return 400, False, f"event {event!r} is not among {list(r.events)}"
    elif r.type == "gitlab":
        if not hmac.compare_digest(h.get("x-gitlab-token", "").encode(errors="replace"), r.token.encode()):
            return 401, False, "the X-Gitlab-Token does not match"
        event = h.get("x-gitlab-event", "")
        if r.events and event not in r.events:
            return 400, False, f"event {event!r} is not among {list(r.events)}"
    return 200, r.fetches, "reconciling"


def attach(rt: Any, follower: Any, address: str, variables: Mapping[str, str] | None) -> None:
    """Serve the running configuration's Receivers on ``address`` (HOST:PORT) for ``homeplane run``."""
    import logging

    from homeplane.observe.admin import AdminServer

    log = logging.getLogger("homeplane.git")
    host, _, port = address.rpartition(":")
    server = AdminServer(host or "127.0.0.1", int(port or 9292), max_body=1024 * 1024)

    def current() -> list[Receiver]:
        return receivers(rt.current.load.objects, variables)[0] if rt.current is not None else []

    async def hook(method: str, target: str, body: bytes, headers: dict[str, str]) -> tuple[int, str, bytes]:
        if method != "POST":
            return 405, "text/plain", b"POST only\n"
        r = next((x for x in current() if x.path == target.split("?", 1)[0]), None)
        if r is None:
            return 404, "text/plain", b"not found\n"
        status, fetch, message = verify(r, headers, body)
        if fetch:
            follower.reconcile()
        log.info("Receiver %s/%s: %s", r.namespace, r.name, message)
        return status, "text/plain", message.encode() + b"\n"

    server.api_route("/hook/", hook)

    async def start() -> None:
        await server.start()
        log.info("Flux Receivers on http://%s:%d/hook/...", server.host, server.port)

    rt.on_start.append(start)
    rt.on_stop.append(server.close)
    # the webhook path is what Flux shows as status.webhookPath (a hash: the token stays secret)
    rt.status_extras["receivers"] = lambda: {"address": f"{server.host}:{server.port}", "served": [
        {"name": f"{r.namespace}/{r.name}", "type": r.type, "webhookPath": r.path} for r in current()]}
