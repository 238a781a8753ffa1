from tests.gateway.conftest import backend  # noqa: F401  (the gateway tests' HTTP backend)
from tests.l4.test_nftables import net  # noqa: F401  (network namespaces for the kernel path)
from tests.gateway.conftest import backend_b  # noqa: F401
