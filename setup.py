"""The compiled parts: the gateway's fast lane (src/homeplane/gateway/frontends/_fastlane.c, with
TLS on OpenSSL in tls.c) and the Maglev table fill (src/homeplane/l4/_maglev.c).

Optional: without a C compiler and Python headers the build goes on without them and every
request (and table) takes the pure-Python path (gateway/frontends/fastlane.py says why it
exists). Without OpenSSL's headers (Debian: libssl-dev) the fast lane is built without its TLS,
and HTTPS is served by Python's ssl module; without nghttp2's (libnghttp2-dev), without its
HTTP/2, and the h2 library's Python implementation serves HTTP/2.
"""

import os
import shutil
import subprocess

from setuptools import Extension, setup


def have_header(header: str) -> bool:
    """Whether the C compiler finds a header (a preprocessor run, nothing is built)."""
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        return False
    try:
        r = subprocess.run([cc, "-E", "-x", "c", "-"], input=f"#include <{header}>\n", capture_output=True, text=True, timeout=60)
    except OSError:
        return False
    return r.returncode == 0


FRONTENDS = "src/homeplane/gateway/frontends"
macros: list[tuple[str, str | None]] = []
libraries: list[str] = []
if have_header("openssl/ssl.h"):
    macros.append(("HP_HAVE_TLS", "1"))
    libraries += ["ssl", "crypto"]
if have_header("nghttp2/nghttp2.h"):
    macros.append(("HP_HAVE_NGHTTP2", "1"))
    libraries.append("nghttp2")

setup(
    ext_modules=[
        Extension(
            "homeplane.gateway.frontends._fastlane",
            [f"{FRONTENDS}/_fastlane.c", f"{FRONTENDS}/tls.c"],
            depends=[f"{FRONTENDS}/tls.h", f"{FRONTENDS}/http2.c"],  # http2.c is included by _fastlane.c
            define_macros=macros,
            libraries=libraries,
            extra_compile_args=["-O2", "-Wall", "-Wno-unused-parameter", "-Wno-missing-field-initializers"],
            optional=True,
        ),
        Extension(
            "homeplane.l4._maglev",
            ["src/homeplane/l4/_maglev.c"],
            extra_compile_args=["-O2", "-Wall"],
            optional=True,
        ),
    ]
)
