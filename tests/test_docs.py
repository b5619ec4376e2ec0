"""Every ```python block in README.md and docs/*.md runs, page by page, in order."""

from pathlib import Path

import pytest

from tests.docs_blocks import python_blocks, run_markdown

ROOT = Path(__file__).resolve().parent.parent
PAGES = [p for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
         if python_blocks(p)]


@pytest.mark.parametrize("page", PAGES, ids=[p.name for p in PAGES])
def test_page_runs(page, monkeypatch):
    monkeypatch.chdir(ROOT)
    run_markdown(page)


def test_quickstart_is_among_the_pages():
    assert ROOT / "docs" / "quickstart.md" in PAGES
