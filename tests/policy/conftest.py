from tests.gateway.conftest import backend  # noqa: F401  (the gateway tests' HTTP backend)
