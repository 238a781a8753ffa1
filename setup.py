"""The compiled parts: the HTTP/1.1 fast lane (src/homeplane/gateway/frontends/_fastlane.c) and
the Maglev table fill (src/homeplane/l4/_maglev.c).

Optional: without a C compiler and Python headers the build goes on without it and every
request (and table) takes the pure-Python path (gateway/fastlane.py says why it exists).
"""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "homeplane.gateway.frontends._fastlane",
            ["src/homeplane/gateway/frontends/_fastlane.c"],
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
