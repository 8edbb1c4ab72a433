"""The validated-whitelist cache: unchanged whitelist inputs skip reading, validation and dedup.

Keyed by whitelist.fingerprint (the config's list and the file's bytes). It remembers the
content-addressed map file that holds those ids; a cache that is damaged, keyed differently,
or names a file that is gone is rebuilt, never trusted.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .. import whitelist as whitelist_mod
from ..config import SplitSettings
from ..errors import LbsplitError
from ..nginx.dialect import WHITELIST_DIR, WhitelistFile, is_whitelist_name, whitelist_map
from . import files

CACHE_FILE = "whitelist-cache.json"


@dataclass(frozen=True)
class Resolved:
    file: WhitelistFile | None  # None: an empty whitelist
    warnings: tuple[str, ...]
    key: str
    from_cache: bool


def _cached(state_dir: Path, key: str, output_dir: Path) -> Resolved | None:
    try:
        raw = files.read_bytes(state_dir / CACHE_FILE)
        data = json.loads(raw) if raw else None
        if not isinstance(data, dict) or data.get("key") != key:
            return None
        found = WhitelistFile.from_json(data["file"]) if data["file"] is not None else None
        warnings = tuple(str(w) for w in data["warnings"])
    except (LbsplitError, ValueError, KeyError, TypeError):
        return None
    if found is not None and not (is_whitelist_name(found.name) and (output_dir / WHITELIST_DIR / found.name).is_file()):
        return None
    return Resolved(found, warnings, key, from_cache=True)


def resolve(state_dir: Path, output_dir: Path, split: SplitSettings, use_cache: bool = True) -> Resolved:
    """The whitelist's map file: from the cache when the inputs are unchanged, else read and validated."""
    key, raw = whitelist_mod.fingerprint(split)
    if use_cache:
        hit = _cached(state_dir, key, output_dir)
        if hit is not None:
            return hit
    wl = whitelist_mod.load(split, raw)
    return Resolved(whitelist_map(wl.ids), tuple(wl.warnings), key, from_cache=False)


def remember(state_dir: Path, resolved: Resolved) -> None:
    """Record a validated whitelist whose map file is on disk."""
    data = {"key": resolved.key, "file": resolved.file.to_json() if resolved.file else None,
            "warnings": list(resolved.warnings)}
    files.atomic_write(state_dir / CACHE_FILE, json.dumps(data) + "\n")
