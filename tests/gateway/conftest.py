from __future__ import annotations

from typing import Iterator

import pytest

from tests.gateway.backends import Backend


@pytest.fixture
def backend() -> Iterator[Backend]:
    b = Backend("a")
    yield b
    b.close()


@pytest.fixture
def backend_b() -> Iterator[Backend]:
    b = Backend("b")
    yield b
    b.close()
