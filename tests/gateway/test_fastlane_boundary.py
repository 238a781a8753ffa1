"""The C boundary: what _fastlane.c assumes of Python, held equal by tests (a rename must break
a test, never silently move traffic to the slow lane)."""

from __future__ import annotations

from homeplane.gateway.frontends import _fastlane, fastlane
from homeplane.gateway.frontends.http2_native import NativeH2Stream
from homeplane.gateway.policies.compression import Encoder
from homeplane.gateway.routing import paths, router
from homeplane.gateway.server import PortServer
from homeplane.gateway.upstreams.cluster import Cluster, EndpointState


def test_constants_shared_with_c() -> None:
    assert _fastlane.ROUTE_FIELDS == len(fastlane.FastRoute._fields)
    assert (_fastlane.MATCH_EXACT, _fastlane.MATCH_PREFIX) == (router.EXACT, router.PREFIX)
    assert _fastlane.MATCH_OPAQUE == fastlane.OPAQUE and fastlane.OPAQUE not in (router.EXACT, router.PREFIX)
    assert _fastlane.PATH_SAFE == paths.PATH_SAFE


def _names(cls: type) -> set[str]:
    names = set(dir(cls))
    for klass in cls.__mro__:
        names.update(getattr(klass, "__slots__", ()))
    return names


def test_every_attribute_c_reads_exists() -> None:
    classes = {"Cluster": Cluster, "EndpointState": EndpointState, "PortServer": PortServer, "Hooks": fastlane.Hooks, "Encoder": Encoder,
               "NativeH2Stream": NativeH2Stream}
    assert set(_fastlane.PYTHON_ATTRIBUTES) == set(classes)
    for name, attrs in _fastlane.PYTHON_ATTRIBUTES.items():
        cls = classes[name]
        missing = [a for a in attrs if a not in _names(cls) and a not in getattr(cls, "__init__").__code__.co_names]
        assert not missing, f"{name} lacks {missing}: _fastlane.c reads them"


def test_the_built_extension_is_not_older_than_its_sources() -> None:
    """The build is optional (setup.py): a C change that does not compile leaves the previous
    build in place, silently. Then the tests would run against old code; say so instead."""
    from pathlib import Path

    built = Path(_fastlane.__file__).stat().st_mtime
    sources = Path(_fastlane.__file__).parent
    stale = [p.name for p in sources.glob("*.[ch]") if p.stat().st_mtime > built]
    assert not stale, f"{stale} changed after the extension was built: run pip install -e . and check the compiler's output"
