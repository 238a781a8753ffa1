"""TLS contexts for listeners: one per certificate, chosen by SNI (pure settings, no sockets)."""

from __future__ import annotations

import os
import ssl
import tempfile

from homeplane.gateway.base import ListenerConf
from homeplane.translate import snapshot as ir

_TLS_VERSIONS = {"1.0": ssl.TLSVersion.TLSv1, "1.1": ssl.TLSVersion.TLSv1_1, "1.2": ssl.TLSVersion.TLSv1_2, "1.3": ssl.TLSVersion.TLSv1_3}


def make_context(cert: ir.TLSCert, conf: ListenerConf, h2: bool, http: bool = True) -> ssl.SSLContext:
    """A server context for one certificate; ``http=False`` (TLS-terminated TCP) offers no ALPN."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = _TLS_VERSIONS.get(conf.min_tls, ssl.TLSVersion.TLSv1_2)
    if conf.max_tls:
        ctx.maximum_version = _TLS_VERSIONS.get(conf.max_tls, ssl.TLSVersion.TLSv1_3)
    if http:
        alpn = [p for p in conf.alpn if p != "h2" or h2]
        ctx.set_alpn_protocols(alpn or ["http/1.1"])
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    # ssl loads key material from files only: write them to a private file, load, remove.
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


