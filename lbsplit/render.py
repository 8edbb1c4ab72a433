"""Render lbsplit.conf from the jinja2 template. Pure: data in, text out."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import jinja2

from .model import FULL, Server, Stage

ENTRY_TEMPLATE = "lbsplit.conf.j2"
DEFAULT_BUCKET_SIZE = 64  # nginx's default map_hash_bucket_size on x86 (one cache line)
DEFAULT_MAX_SIZE = 2048
POINTER = 8


def _template_dirs() -> list[str]:
    here = Path(__file__).resolve().parent
    # Installed: templates ship as lbsplit/templates. Source tree: ./templates beside the package.
    return [str(p) for p in (here / "templates", here.parent / "templates") if p.is_dir()]


_ENV = jinja2.Environment(
    loader=jinja2.FileSystemLoader(_template_dirs()),
    undefined=jinja2.StrictUndefined,
    autoescape=False,
    keep_trailing_newline=True,
    trim_blocks=True,
    lstrip_blocks=True,
)


@dataclass(frozen=True)
class RenderInput:
    generation: int | str
    stage: Stage
    mode: str
    key: str
    fallback_key: str
    v1: tuple[Server, ...]
    v2: tuple[Server, ...]
    whitelist: tuple[str, ...]
    status_listen: str


@dataclass(frozen=True)
class MapHashSize:
    bucket_size: int
    max_size: int


def map_key(user_id: str) -> str:
    """A whitelist id as a quoted map key that nginx matches literally.

    Inside double quotes nginx only treats backslash and the quote as special. The
    leading backslash is stripped by the map module after it checks for `default`,
    `include` and `~`, so every id, whatever its first word, is a plain key.
    """
    return '"\\\\' + user_id.replace("\\", "\\\\").replace('"', '\\"') + '"'


def whitelist_lines(ids: tuple[str, ...]) -> str:
    """One `"\\id" lbsplit_v2;` line per id, as map_key spells it, built with whole-string operations.

    Equivalent to joining map_key(id) lines; a million ids take a fraction of a second
    instead of a million template-loop iterations. Ids never contain NUL (validated).
    """
    if not ids:
        return ""
    escaped = "\0".join(ids).replace("\\", "\\\\").replace('"', '\\"')
    return '    "\\\\' + escaped.replace("\0", '" lbsplit_v2;\n    "\\\\') + '" lbsplit_v2;\n'


def _elt_size(key_bytes: int) -> int:
    # NGX_HASH_ELT_SIZE: a value pointer, then the key with a 2-byte length, pointer-aligned.
    return POINTER + (key_bytes + 2 + POINTER - 1) // POINTER * POINTER


def _poisson_tail(mean: float, above: int) -> float:
    """P(X > above) for X ~ Poisson(mean)."""
    term = math.exp(-mean)
    cdf = term
    for k in range(1, above + 1):
        term *= mean / k
        cdf += term
    return max(0.0, 1.0 - cdf)


def map_hash_size(ids: tuple[str, ...]) -> MapHashSize | None:
    """Hash sizes that let nginx build the whitelist map, or None when its defaults do.

    nginx fails hard when one key does not fit a bucket, and only warns when no table
    size up to max_size fits every bucket; above 10,000 it tries just the last 1,000
    sizes below max_size, so max_size must be near a size that works.
    """
    if not ids:
        return None
    joined = "".join(ids)
    if joined.isascii():
        longest_bytes = max(map(len, ids))
        total_bytes = len(joined)
    else:
        sizes = [len(i.encode("utf-8")) for i in ids]
        longest_bytes, total_bytes = max(sizes), sum(sizes)
    longest = _elt_size(longest_bytes)
    if longest + POINTER <= DEFAULT_BUCKET_SIZE and len(ids) <= 500:
        return None
    bucket = 512
    while bucket < 4 * longest + POINTER:
        bucket *= 2
    capacity = (bucket - POINTER) // longest
    average = _elt_size(math.ceil(total_bytes / len(ids)))
    per_bucket = max(1, (bucket - POINTER) // average)
    # Pick the fullest mean load whose expected count of overflowing buckets stays tiny.
    mean = float(per_bucket)
    while mean > 0.25:
        buckets = len(ids) / mean
        if buckets * _poisson_tail(mean, capacity) < 0.05:
            break
        mean *= 0.9
    max_size = int(len(ids) / mean) + 1000
    return MapHashSize(bucket_size=bucket, max_size=max(max_size, DEFAULT_MAX_SIZE))


def pool_weights(v1: tuple[Server, ...], v2: tuple[Server, ...], hundredths: int) -> tuple[list[int], list[int]]:
    """Integer weights giving v2 exactly hundredths/10000 of a shared round-robin pool.

    Each server keeps its configured weight relative to its own pool; backup and
    down servers take no share, so they do not count in the totals.
    """
    total1 = sum(s.weight for s in v1 if not (s.backup or s.down))
    total2 = sum(s.weight for s in v2 if not (s.backup or s.down))
    w1 = [s.weight * (FULL - hundredths) * total2 for s in v1]
    w2 = [s.weight * hundredths * total1 for s in v2]
    g = math.gcd(*w1, *w2)
    return [w // g for w in w1], [w // g for w in w2]


def render(inp: RenderInput) -> str:
    """The full text of lbsplit.conf for one generation."""
    stage = inp.stage
    h = stage.hundredths
    on = stage.v2_enabled
    whitelist = inp.whitelist if on else ()
    v2_needed = on and (bool(whitelist) or h > 0)
    pool_lines: list[str] = []
    split = False
    if not on or h == 0:
        default_target = "lbsplit_v1"
    elif h == FULL:
        default_target = "lbsplit_v2"
    elif inp.mode == "hash":
        default_target = "$lbsplit_split"
        split = True
    else:
        w1, w2 = pool_weights(inp.v1, inp.v2, h)
        pool_lines = [s.line(w) for s, w in zip(inp.v1, w1)] + [s.line(w) for s, w in zip(inp.v2, w2)]
        default_target = "lbsplit_pool"
    summary = f"on at {stage.percent}% ({inp.mode} mode)" if on else "off (everyone on v1)"
    return _ENV.get_template(ENTRY_TEMPLATE).render(
        generation=inp.generation,
        summary=summary,
        percent=stage.percent,
        mode=inp.mode,
        key=inp.key,
        fallback_key=inp.fallback_key,
        v1_lines=[s.line() for s in inp.v1],
        v2_lines=[s.line() for s in inp.v2] if v2_needed else [],
        pool_lines=pool_lines,
        split=split,
        default_target=default_target,
        whitelist_size=len(whitelist),
        whitelist_lines=whitelist_lines(whitelist),
        map_hash=map_hash_size(whitelist),
        status_listen=inp.status_listen,
        status_percent=stage.percent if on else "null",
        v2_json="true" if on else "false",
    )
