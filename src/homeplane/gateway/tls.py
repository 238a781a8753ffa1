"""TLS contexts for listeners: one per certificate, chosen by SNI (pure settings, no sockets).

Two implementations of the same contexts: Python's ``ssl`` (here: the pure-Python lane, and
TLS-mode TCP listeners) and the fast lane's OpenSSL contexts (``frontends/fastlane.py``
``make_native_context``, used by HTTPS ports when the extension is built with TLS). Which
certificate a server name gets is decided once, here (:func:`choose`), for both.
"""

from __future__ import annotations

import os
import ssl
import tempfile
from typing import Sequence, TypeVar

from homeplane.gateway.base import ListenerConf
from homeplane.translate import snapshot as ir

C = TypeVar("C")

_TLS_VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def make_context(cert: ir.TLSCert, conf: ListenerConf, h2: bool, http: bool = True) -> ssl.SSLContext:
    """A server context for one certificate; ``http=False`` (TLS-terminated TCP) offers no ALPN."""
    return configure(ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER), cert, conf, h2, http)


def configure(ctx: ssl.SSLContext, cert: ir.TLSCert, conf: ListenerConf, h2: bool, http: bool = True) -> ssl.SSLContext:
    """Set a context's certificate, versions and ALPN; on a context a server already listens
    with, new connections get the new settings."""
    ctx.minimum_version = _TLS_VERSIONS.get(conf.min_tls, ssl.TLSVersion.TLSv1_2)
    ctx.maximum_version = _TLS_VERSIONS.get(conf.max_tls or "", ssl.TLSVersion.MAXIMUM_SUPPORTED)
    if http:
        alpn = [p for p in conf.alpn if p != "h2" or h2]
        ctx.set_alpn_protocols(alpn or ["http/1.1"])
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # ssl loads key material from files only: anonymous in-memory files (memfd), so a private
    # key (perhaps decrypted from SOPS) never reaches a disk; a private temporary folder where
    # there is no memfd
    if hasattr(os, "memfd_create"):
        fds = [os.memfd_create(name, os.MFD_CLOEXEC) for name in ("tls.crt", "tls.key")]
        try:
            os.write(fds[0], cert.cert_pem)
            os.write(fds[1], bytes(cert.key_pem))
            ctx.load_cert_chain(f"/proc/self/fd/{fds[0]}", f"/proc/self/fd/{fds[1]}")
        finally:
            for fd in fds:
                os.close(fd)
        return ctx
    with tempfile.TemporaryDirectory(prefix="homeplane-tls-") as d:
        os.chmod(d, 0o700)
        crt, key = os.path.join(d, "tls.crt"), os.path.join(d, "tls.key")
        with open(crt, "wb") as f:
            f.write(cert.cert_pem)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(bytes(cert.key_pem))
        ctx.load_cert_chain(crt, key)
    return ctx


def cert_matches(cert: ir.TLSCert, name: str) -> bool:
    for n in cert.dns_names:
        if n == name or (n.startswith("*.") and name.endswith(n[1:]) and name.count(".") == n.count(".")):
            return True
    return False




def choose(listeners: Sequence[tuple[str | None, Sequence[tuple[ir.TLSCert, C]]]], name: str) -> C | None:
    """The context for a ClientHello's server name: the first listener whose hostname matches
    (or that has none), then its first certificate that names it, else its first certificate."""
    for hostname, ctxs in listeners:
        h = hostname
        if h is None or h == name or (h.startswith("*.") and name.endswith(h[1:])):
            for cert, ctx in ctxs:
                if cert_matches(cert, name):
                    return ctx
            return ctxs[0][1] if ctxs else None
    return None

