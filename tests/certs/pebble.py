"""A real Pebble (Let's Encrypt's test ACME server) for the certificate tests.

Pebble serves ACME over HTTPS with a certificate we make here (its package ships none), and
validates DNS-01 by asking the DNS server it is given (the tests' Knot). Nonce rejection and
authorization reuse are off so runs are deterministic.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import ssl
import subprocess
import time
import urllib.request
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listener_cert(workdir: Path) -> tuple[Path, Path, bytes]:
    """A throwaway CA and a certificate for 127.0.0.1/localhost signed by it; returns the CA PEM."""
    now = dt.datetime.now(dt.timezone.utc)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "pebble listener test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(hours=1))
          .not_valid_after(now + dt.timedelta(days=2)).add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    import ipaddress

    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(hours=1)).not_valid_after(now + dt.timedelta(days=2))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), False)
            .sign(ca_key, hashes.SHA256()))
    cert_path, key_path = workdir / "pebble-cert.pem", workdir / "pebble-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    return cert_path, key_path, ca.public_bytes(serialization.Encoding.PEM)


class Pebble:
    def __init__(self, workdir: Path, dns_server: str, always_valid: bool = False):
        self.dir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self.port, self.mgmt = _free_port(), _free_port()
        self.http_port = _free_port()
        cert, key, self.listener_ca = _listener_cert(workdir)
        (workdir / "pebble.json").write_text(json.dumps({"pebble": {
            "listenAddress": f"127.0.0.1:{self.port}", "managementListenAddress": f"127.0.0.1:{self.mgmt}",
            "certificate": str(cert), "privateKey": str(key), "httpPort": self.http_port, "tlsPort": _free_port(),
            "ocspResponderURL": "", "externalAccountBindingRequired": False,
        }}))
        self.env = {**os.environ, "PEBBLE_VA_NOSLEEP": "1", "PEBBLE_WFE_NONCEREJECT": "0", "PEBBLE_AUTHZREUSE": "0"}
        if always_valid:  # for solvers whose records no DNS server here can show (the Cloudflare fake)
            self.env["PEBBLE_VA_ALWAYS_VALID"] = "1"
        self.dns_server = dns_server
        self.start()

    def start(self) -> None:
        workdir = self.dir
        self.log = open(workdir / "pebble.log", "a")
        self.proc = subprocess.Popen([shutil.which("pebble") or "/usr/bin/pebble", "-config", str(workdir / "pebble.json"),
                                      "-dnsserver", self.dns_server], env=self.env, stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                self._get(f"https://127.0.0.1:{self.port}/dir")
                return
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"pebble did not start: {(workdir / 'pebble.log').read_text()}")

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def _get(self, url: str) -> bytes:
        ctx = ssl.create_default_context(cadata=self.listener_ca.decode())
        with urllib.request.urlopen(url, context=ctx, timeout=5) as r:
            return r.read()

    def roots(self) -> bytes:
        """The roots Pebble signs with (they change on every start)."""
        return self._get(f"https://127.0.0.1:{self.mgmt}/roots/0")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.log.close()
