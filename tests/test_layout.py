"""The layout the package docstrings describe is the layout of the code: each part's "May import:" line
names everything its modules import from lbsplit, and the leaf modules import no part. Pure (reads source)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "lbsplit"
PARTS = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
LEAVES = ("errors", "model")  # plain data: they import no other lbsplit module but each other


def imported(path: Path, package_depth: int) -> set[str]:
    """The top-level lbsplit names (parts or modules) a module imports, relative or absolute."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == package_depth + 1:  # from ..X import / from .. import X
                names.update([node.module.split(".")[0]] if node.module else [a.name for a in node.names])
            elif node.level == 0 and node.module and node.module.startswith("lbsplit."):
                names.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            names.update(a.name.split(".")[1] for a in node.names if a.name.startswith("lbsplit."))
    return names


def test_each_part_imports_only_what_its_docstring_allows():
    assert {"nginx", "rollout", "watch", "fleet"} <= set(PARTS)
    wrong = {}
    for part in PARTS:
        doc = ast.get_docstring(ast.parse((ROOT / part / "__init__.py").read_text())) or ""
        found = re.search(r"May import: ([a-z, ]+)\.", doc)
        assert found, f"lbsplit/{part}/__init__.py has no 'May import:' line"
        allowed = {name.strip() for name in found.group(1).split(",")}
        used = set().union(*(imported(f, 1) for f in (ROOT / part).glob("*.py"))) - {part}
        if used - allowed:
            wrong[part] = sorted(used - allowed)
    assert wrong == {}


def test_the_leaf_modules_import_no_part():
    for leaf in LEAVES:
        assert imported(ROOT / f"{leaf}.py", 0) - set(LEAVES) == set(), leaf


def test_the_scan_sees_imports_so_it_can_fail():
    # A check that reads nothing passes for any code: make sure it reads a known import.
    assert "rollout" in imported(ROOT / "watch" / "watchdog.py", 1)
