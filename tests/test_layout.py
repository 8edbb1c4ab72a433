"""The layout the package docstrings describe is the layout of the code: each part's "May import:" line
names everything its modules import from lbsplit, and the leaf modules import no part. Pure (reads source)."""

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent / "lbsplit"
PARTS = sorted(p.name for p in ROOT.iterdir() if (p / "__init__.py").is_file())
LEAVES = ("errors", "model", "stamps")  # plain data: they import no other lbsplit module but each other


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


def allowed_parts(part: str) -> set[str]:
    doc = ast.get_docstring(ast.parse((ROOT / part / "__init__.py").read_text())) or ""
    return {name.strip() for name in re.search(r"May import: ([a-z, ]+)\.", doc).group(1).split(",")} & set(PARTS)


def test_the_parts_form_no_cycle_so_every_arrow_points_one_way():
    # What each part may import is checked above; here, that those permissions have no loop
    # (app -> fleet -> watch -> rollout -> nginx), so no part can reach one above it.
    graph = {part: allowed_parts(part) for part in PARTS}
    order = []
    while graph:
        free = sorted(p for p, needs in graph.items() if not needs - set(order))
        assert free, f"a cycle among {sorted(graph)}"
        order += free
        for p in free:
            del graph[p]
    assert order.index("nginx") < order.index("rollout") < order.index("watch") < order.index("fleet") \
        < order.index("app")


def test_the_test_harness_is_not_shipped_in_the_wheel():
    # Test-only helpers live in tests/harness.py; lbsplit/ ships only what `make demo` and the tool run.
    harness = {"EtcdProcess", "TlsFiles", "pipelined_variants", "etcd_ready", "fleet_section"}
    defined = {node.name for path in ROOT.rglob("*.py") for node in ast.walk(ast.parse(path.read_text()))
               if isinstance(node, (ast.FunctionDef, ast.ClassDef))}
    assert "Sandbox" in defined and defined & harness == set()


def test_lbsplit_help_loads_no_library_and_no_part_it_does_not_need():
    # The imports kept inside functions are there for start-up time; this holds that speed.
    import subprocess
    import sys

    probe = ("import sys\nsys.argv = ['lbsplit', '--help']\nfrom lbsplit.cli import main\n"
             "try:\n    main()\nexcept SystemExit:\n    pass\nprint(' '.join(sorted(sys.modules)), file=sys.stderr)\n")
    loaded = set(subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                check=True).stderr.split())
    assert {"lbsplit.cli", "click"} <= loaded  # it did run the CLI
    heavy = {"jinja2", "crossplane", "requests", "urllib3", "ssl", "http.client",
             "lbsplit.fleet", "lbsplit.web", "lbsplit.demo", "lbsplit.watch.judge", "lbsplit.watch.sources",
             "lbsplit.watch.endpoint", "lbsplit.watch.watchdog", "lbsplit.watch.logsource", "lbsplit.watch.hooks",
             "lbsplit.watch.notify", "lbsplit.watch.prometheus", "lbsplit.nginx.flatten"}
    assert loaded & heavy == set()


def test_every_benchmark_module_imports():
    # `make bench` runs for half an hour before it reaches its last section: a broken import must fail here.
    import importlib
    import sys

    sys.path.insert(0, str(ROOT.parent))
    try:
        for path in sorted((ROOT.parent / "benchmarks").glob("*.py")):
            importlib.import_module(f"benchmarks.{path.stem}")
    finally:
        sys.path.remove(str(ROOT.parent))
