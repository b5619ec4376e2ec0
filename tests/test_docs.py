"""Every ```python block in README.md and docs/*.md runs, page by page, in order; every
docstring cross-reference into ppl_vae names something that exists."""

import importlib
import re
from pathlib import Path

import pytest

from ppl_vae import arviz_compat
from tests.docs_blocks import python_blocks, run_markdown

ROOT = Path(__file__).resolve().parent.parent
PAGES = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
         if python_blocks(p)]
# pages whose walk-through calls arviz 0.2x's own API (az.plot_ppc, ...); their arviz 1.x
# equivalents are in ```python arviz1 blocks, run by tests/test_arviz_compat.py
ARVIZ0_PAGES = {"diagnostics.md"}


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_runs(page, monkeypatch):
    if page.name in ARVIZ0_PAGES and arviz_compat.GENERATION != 0:
        pytest.skip(f"{page.name} is written in arviz 0.2x calls; arviz 1.x is installed")
    monkeypatch.chdir(ROOT)
    run_markdown(page)


def test_quickstart_is_among_the_pages():
    assert ROOT / "docs" / "quickstart.md" in PAGES


REFERENCE = re.compile(r":(?:mod|func|class|meth|data|attr):`~?(ppl_vae\.[A-Za-z_.]+)`")


def _resolves(path: str) -> bool:
    """Whether ``path`` names a module, or an attribute reached from the longest module."""
    parts = path.split(".")
    for cut in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:cut]))
        except ImportError:
            continue
        for name in parts[cut:]:
            if not hasattr(target, name):
                return False
            target = getattr(target, name)
        return True
    return False


def test_docstring_cross_references_name_what_exists():
    """Every Sphinx role pointing into ppl_vae names a module or object at its current path."""
    stale = [(str(f.relative_to(ROOT)), ref)
             for f in sorted((ROOT / "ppl_vae").rglob("*.py"))
             for ref in REFERENCE.findall(f.read_text()) if not _resolves(ref)]
    assert not stale
