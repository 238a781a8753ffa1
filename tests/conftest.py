from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from homeplane.api.loader import LoadOptions, LoadResult, load_text
from homeplane.translate import Translation, translate

REPO = Path(__file__).resolve().parent.parent
CORPUS = REPO.parent / "shared" / "corpus"
EXAMPLE = REPO / "examples" / "home"


def load(text: str, variables: dict[str, str] | None = None, filename: str = "test.yaml", **opts) -> LoadResult:
    result = LoadResult()
    load_text(textwrap.dedent(text), filename, LoadOptions(variables=variables, **opts), result)
    return result


def translate_text(text: str, **kw) -> tuple[LoadResult, Translation]:
    loaded = load(text, **kw)
    assert not loaded.diagnostics.errors, [str(d) for d in loaded.diagnostics.errors]
    return loaded, translate(loaded.objects)


@pytest.fixture
def corpus() -> Path:
    assert CORPUS.is_dir(), f"the shared corpus is expected at {CORPUS}"
    return CORPUS
