"""Run the ```python blocks of a markdown page in order, in one namespace.

    python tests/docs_blocks.py docs/quickstart.md

prints what the blocks print; tests/test_docs.py runs every page this way.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)


def python_blocks(path: str | Path) -> list[str]:
    return BLOCK.findall(Path(path).read_text())


def run_markdown(path: str | Path) -> dict:
    namespace: dict = {"__name__": "__docs__"}
    for number, block in enumerate(python_blocks(path), 1):
        code = compile(block, f"{path}:block{number}", "exec")
        exec(code, namespace)  # noqa: S102 - executing our own documentation is the point
    return namespace


if __name__ == "__main__":
    for page in sys.argv[1:]:
        run_markdown(page)
