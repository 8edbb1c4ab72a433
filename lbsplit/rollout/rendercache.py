"""Rendered lbsplit.conf skeletons, kept in state_dir by a hash of everything the render reads.

A skeleton has markers for the generation (and the percentage); filling them in is a
string replace, so a percent change or a revert after the first render of a layout needs
no template engine. A missing, unreadable or stale entry is rendered again; what comes out
is checked like any render (structure check, nginx -t) before it is installed.
"""

from __future__ import annotations

from pathlib import Path

from ..errors import LbsplitError
from ..nginx.dialect import RenderInput, render_key
from . import files

FOLDER = "render-cache"
KEEP = 16


class RenderCache:
    def __init__(self, state_dir: Path, write: bool):
        self.dir = Path(state_dir) / FOLDER
        self.write = write

    def get(self, inputs: RenderInput) -> str | None:
        try:
            raw = files.read_bytes(self.dir / f"{render_key(inputs)}.conf")
        except LbsplitError:
            return None
        return raw.decode("utf-8") if raw else None

    def put(self, inputs: RenderInput, text: str) -> None:
        if not self.write:
            return
        try:
            files.ensure_dir(self.dir)
            files.atomic_write(self.dir / f"{render_key(inputs)}.conf", text)
            entries = sorted(self.dir.glob("*.conf"), key=lambda p: p.stat().st_mtime, reverse=True)
            for old in entries[KEEP:]:
                files.remove(old)
        except (LbsplitError, OSError):
            pass  # only a lost shortcut
