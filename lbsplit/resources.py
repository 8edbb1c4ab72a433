"""Where the files that ship beside the code are: the jinja2 templates and the nginx snippets.

Installed, they are package data (`lbsplit/templates`, `lbsplit/snippets`); in the
source tree they are the top-level `templates/` and `nginx/` folders.
"""

from __future__ import annotations

from pathlib import Path

_HERE = Path(__file__).resolve().parent


def _find(installed: str, source: str) -> Path:
    for candidate in (_HERE / installed, _HERE.parent / source):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"lbsplit is installed without its {installed}/ folder; reinstall it")


def templates_dir() -> Path:
    """The jinja2 templates lbsplit.conf is rendered from."""
    return _find("templates", "templates")


def snippets_dir() -> Path:
    """The nginx snippets users include (lbsplit-proxy.conf), and the demo's sandbox configs."""
    return _find("snippets", "nginx")
