from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest

from homeplane.api.loader import LoadOptions, LoadResult, load_text
from homeplane.translate import Translation, translate

REPO = Path(__file__).resolve().parent.parent
# real home-ops repos beside the project (read-only); HOMEPLANE_CORPUS points elsewhere
CORPUS = Path(os.environ.get("HOMEPLANE_CORPUS") or REPO.parent / "shared" / "corpus")
EXAMPLE = REPO / "examples" / "home"


def load(text: str, variables: dict[str, str] | None = None, filename: str = "test.yaml", **opts) -> LoadResult:
    result = LoadResult()
    load_text(textwrap.dedent(text), filename, LoadOptions(variables=variables, **opts), result)
    return result


def translate_text(text: str, **kw) -> tuple[LoadResult, Translation]:
    loaded = load(text, **kw)
    assert not loaded.diagnostics.errors, [str(d) for d in loaded.diagnostics.errors]
    return loaded, translate(loaded.objects)


def corpus_or_skip() -> Path:
    """The corpus folder; a clone outside the workplace layout skips these tests with the reason
    (CI cannot skip them: .ci/run stops first when the corpus is missing)."""
    if not CORPUS.is_dir():
        pytest.skip(f"the shared corpus of real home-ops repos is not at {CORPUS} (set HOMEPLANE_CORPUS)")
    return CORPUS


@pytest.fixture
def corpus() -> Path:
    return corpus_or_skip()
