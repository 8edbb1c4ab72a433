"""The README is the manual: every config key, command and exit code is documented there."""

import re
from pathlib import Path

from lbsplit.cli import main
from lbsplit.config import SCHEMA
from lbsplit.errors import ExitCode

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def keys(schema: dict, prefix: str = ""):
    for name, kind in schema.items():
        yield prefix + name, name
        if isinstance(kind, dict):
            yield from keys(kind, f"{prefix}{name}.")
        elif isinstance(kind, list):
            yield from keys(kind[0], f"{prefix}{name}.")


def test_every_config_key_is_documented():
    # a key counts as documented when it appears as `key = ` in a toml block or as `key` in the text
    missing = [full for full, name in keys(SCHEMA)
               if not re.search(rf"(^|\s|\[|`|\.){re.escape(name)}(\s*=|`|\])", README, re.MULTILINE)]
    assert missing == []


def test_every_command_is_in_the_commands_table():
    table = README[README.index("## Commands"):README.index("### What `apply` and `revert` do")]
    missing = [name for name in main.commands if f"`lbsplit {name}" not in table]
    assert missing == []


def test_every_exit_code_is_in_the_exit_code_table():
    table = README[README.index("## Exit codes"):README.index("## What lbsplit guarantees")]
    documented = {int(code) for code in re.findall(r"^\| (\d+) \|", table, re.MULTILINE)}
    used = {v for k, v in vars(ExitCode).items() if not k.startswith("_")}
    assert used == documented


def test_every_failpoint_step_is_in_the_failpoints_paragraph():
    paragraph = README[README.index("**Failpoints.**"):]
    paragraph = paragraph[:paragraph.index("\n\n")]
    root = Path(__file__).resolve().parent.parent / "lbsplit"
    steps = {m for path in root.rglob("*.py") for m in re.findall(r'failpoint\("([a-z-]+)"\)', path.read_text())}
    assert len(steps) >= 13  # the nine-plus transaction steps and the fleet's: the scan found them
    assert sorted(s for s in steps if f"`{s}`" not in paragraph) == []


def test_every_test_the_readme_names_exists():
    # The guarantees table names its tests: a renamed or moved test must not leave the README pointing at nothing.
    text = README
    missing, checked = [], 0
    for row in text.splitlines():
        current = None
        for ref in re.findall(r"`(tests/[\w/]+\.py)?(::\w+)?`", row):
            path, name = ref
            current = path or current
            if current is None:
                continue
            checked += 1
            source = (ROOT / current).read_text() if (ROOT / current).is_file() else None
            if source is None:
                missing.append(current)
            elif name and f"def {name[2:]}(" not in source:
                missing.append(current + name)
    assert checked > 50 and missing == []  # it read the table's references, and each one is there
