"""The lbsplit.conf dialect: the only code that writes the file's format and reads it back.

It renders lbsplit.conf from templates/ (jinja2), checks a rendered text's shape
with crossplane, reads the whitelist keys back out of a live file, and declares the
access-log fields and the status page that the template spells out. Pure: text in,
text out; nothing here runs nginx or touches a live file.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import re
import tempfile
from pathlib import Path
from dataclasses import dataclass

from .. import resources
from ..errors import StructureError
from ..model import DEFAULT_RUNTIME, FULL, Mode, Pooling, Runtime, Server, Stage

ENTRY_FILE = "lbsplit.conf"
STATUS_PATH = "/lbsplit/status"
CONTROL_PATH = "/lbsplit/control"  # the lua runtime's endpoint that sets the live stage
V1_CHECK_PATH = "/lbsplit/v1-check"  # proxies to upstream lbsplit_v1: a revert asks v1 through nginx
TOKEN_HEADER = "X-Lbsplit-Token"
# The two lines that hold a file's generation and stage. In the lua runtime they are the only
# lines a percent change or a revert rewrites (restage); `stage` is hundredths, -1 for v2 off.
HEADER = "# Managed by lbsplit: generation {generation}, v2 {summary}."
LOAD_LINE = "    local generation, stage = {generation}, {stage}  -- the stage this file holds (-1: v2 off)"
OFF = -1
# The `lbsplit` access-log format: tab-separated, in this order. The template and the
# log reader both take it from here.
LOG_FIELDS = (
    "$msec",
    "$lbsplit_upstream",
    "$status",
    "$upstream_status",
    "$request_time",
    "$upstream_response_time",
    "$upstream_connect_time",
    "$upstream_addr",
)
UPSTREAM_OF_VARIANT = {"v1": "lbsplit_v1", "v2": "lbsplit_v2"}

ENTRY_TEMPLATE = "lbsplit.conf.j2"
DEFAULT_BUCKET_SIZE = 64  # nginx's default map_hash_bucket_size on x86 (one cache line)
DEFAULT_MAX_SIZE = 2048
CHECK_TEMPLATE = "check-nginx.conf"
POINTER = 8


@functools.cache
def _environment():
    # jinja2 is imported on first render only: status, route and revert's start-up do not pay for it.
    import jinja2  # noqa: here, on first render only

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(resources.templates_dir())),
        undefined=jinja2.StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )


def check_config(root: Path, modules: tuple[str, ...] = ()) -> str:
    """The private nginx.conf (templates/check-nginx.conf) in which `nginx -t` checks root/lbsplit.conf."""
    import string  # noqa: PLC0415 - only a check needs it

    text = (resources.templates_dir() / CHECK_TEMPLATE).read_text(encoding="utf-8")
    body = "\n".join(line for line in text.splitlines() if not line.startswith("#")) + "\n"
    return string.Template(body).substitute(load_modules="".join(f"load_module {m};\n" for m in modules),
                                            root=str(root), entry=ENTRY_FILE)


@dataclass(frozen=True)
class RenderInput:
    generation: int | str
    stage: Stage
    mode: Mode
    key: str
    fallback_key: str
    v1: tuple[Server, ...]
    v2: tuple[Server, ...]
    whitelist: tuple[str, ...]  # written inline (tests, small previews); see `include`
    status_listen: str
    owner: str = "-"  # the state_dir that manages the file (rollout.state.StateStore.owner)
    include: str | None = None  # the whitelist's map file (absolute path) instead of inline ids
    include_file: WhitelistFile | None = None
    percent_text: str | None = None  # written where the percentage goes, instead of stage.percent
    runtime: Runtime = DEFAULT_RUNTIME
    token_digest: str = "-"  # lua runtime: base64 SHA-1 of the control token (the token stays in state_dir)
    pooling: Pooling = Pooling()  # keepalive and the balancing method of each upstream
    force_header: str = ""  # QA override: the request header that picks the variant while v2 is on ("" none)
    force_cookie: str = ""  # the same as a cookie; the header wins when both are sent


@functools.cache
def template_digest() -> str:
    """A hash of the template files: a text rendered from other templates is another text."""
    digest = hashlib.sha256()
    for path in sorted([*resources.templates_dir().glob("*.j2"), *resources.templates_dir().glob("*.lua")]):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def render_key(inp: "RenderInput") -> str:
    """Everything render() reads, hashed (the whitelist map file by name, not by its text)."""
    fields = {name: getattr(inp, name) for name in inp.__dataclass_fields__ if name != "include_file"}
    fields["include_file"] = inp.include_file.to_json() if inp.include_file else None
    return hashlib.sha256((repr(sorted(fields.items())) + template_digest()).encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class MapHashSize:
    bucket_size: int
    max_size: int


# The whitelist lives in its own file, named by its content, in a subfolder of output_dir: a
# percent change rewrites only the small lbsplit.conf, and a folder that nginx includes by a
# glob (conf.d/*.conf) never picks the map file up on its own.
WHITELIST_DIR = "lbsplit.d"


@dataclass(frozen=True)
class WhitelistFile:
    """The whitelist's map entries as one content-addressed file."""

    name: str  # whitelist-<sha256>.map
    size: int  # ids in it
    map_hash: MapHashSize | None
    text: str | None = None  # None: known from the cache, already on disk

    def to_json(self) -> dict:
        sizes = None if self.map_hash is None else [self.map_hash.bucket_size, self.map_hash.max_size]
        return {"name": self.name, "size": self.size, "map_hash": sizes}

    @classmethod
    def from_json(cls, data: dict) -> "WhitelistFile":
        sizes = data.get("map_hash")
        return cls(str(data["name"]), int(data["size"]), MapHashSize(*map(int, sizes)) if sizes else None)


def whitelist_map(ids: tuple[str, ...]) -> WhitelistFile | None:
    """The content-addressed map file for these ids, or None for an empty whitelist."""
    if not ids:
        return None
    text = whitelist_lines(ids)
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:32]
    return WhitelistFile(f"whitelist-{digest}.map", len(ids), map_hash_size(ids), text)


_WHITELIST_NAME = re.compile(r"whitelist-[0-9a-f]{32}\.map")


def is_whitelist_name(name: str) -> bool:
    return bool(_WHITELIST_NAME.fullmatch(name))


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


def summary(stage: Stage, mode: Mode, percent: str | None = None) -> str:
    if not stage.v2_enabled:
        return "off (everyone on v1)"
    return f"on at {percent or stage.percent}% ({mode} mode)"


def lua_stage(stage: Stage) -> int:
    """The stage as the lua runtime's shared dict holds it: hundredths, or -1 for v2 off."""
    return stage.hundredths if stage.v2_enabled else OFF


_HEADER_LINE = re.compile(r"# Managed by lbsplit: generation \S+, v2 [^\n]*\.")
_LOAD = re.compile(r"^    local generation, stage = (\S+), (-?\d+)  -- [^\n]*$", re.MULTILINE)


def restage(text: str, generation: int | str, stage: Stage, mode: Mode) -> str | None:
    """A lua-runtime lbsplit.conf with only its generation and stage changed; None for any other text.

    What a zero-reload percent change or revert installs: nothing nginx loads differs but the
    stage a restart or reload starts from.
    """
    head, sep, rest = text.partition("\n")
    found = list(_LOAD.finditer(rest))
    if not sep or not _HEADER_LINE.fullmatch(head) or len(found) != 1:
        return None
    line = found[0]
    return (HEADER.format(generation=generation, summary=summary(stage, mode)) + "\n" + rest[:line.start()]
            + LOAD_LINE.format(generation=generation, stage=lua_stage(stage)) + rest[line.end():])


_HEADER_OFF = re.compile(r"# Managed by lbsplit: generation (\d+), v2 off \(everyone on v1\)\.\n")


def unrecorded_off_generation(text: str) -> int | None:
    """The generation of a rendered v2-off lbsplit.conf (its header line), or None for any other text.

    What `repair` adopts when a revert had to run with no room to record itself."""
    match = _HEADER_OFF.match(text)
    return int(match.group(1)) if match else None


def header_generation(text: str) -> int | None:
    """The generation a rendered lbsplit.conf's header names, or None."""
    match = re.match(r"# Managed by lbsplit: generation (\d+), v2 ", text)
    return int(match.group(1)) if match else None


# What an upstream block may hold: its servers, and the [upstreams] pooling options (one balancing method).
UPSTREAM_DIRECTIVES = {"server", "keepalive", "keepalive_timeout", "least_conn", "random", "hash"}

_SIZING = re.compile(r"^map_hash_bucket_size (\d+);\nmap_hash_max_size (\d+);$", re.MULTILINE)
_PREAMBLE_END = "# Include it once at http level; proxy with: proxy_pass http://$lbsplit_upstream;\n"


def carry_sizing(live: str, text: str) -> str:
    """`text` (a revert config) with the live file's http-level map sizing kept, when `text` sets none.

    The sizing lbsplit writes for a whitelist holds for every map at http level, the site's own too:
    a site that dropped its own map_hash_bucket_size for lbsplit's (the "is duplicate" advice) needs
    it after a revert as well, or its maps stop building and the revert fails nginx -t."""
    found = _SIZING.search(live[:1 << 16])
    if found is None or _SIZING.search(text[:1 << 16]) or _PREAMBLE_END not in text:
        return text
    kept = (f"\n# Kept from the file before this revert: the site's own maps may rely on it.\n"
            f"map_hash_bucket_size {found.group(1)};\nmap_hash_max_size {found.group(2)};\n")
    return text.replace(_PREAMBLE_END, _PREAMBLE_END + kept, 1)


def live_stage(text: str) -> tuple[int, int] | None:
    """(generation, lua stage) a lua-runtime lbsplit.conf holds; None for a reload-runtime file."""
    found = list(_LOAD.finditer(text[:1 << 16]))
    if len(found) != 1 or not found[0].group(1).isdigit():
        return None
    return int(found[0].group(1)), int(found[0].group(2))


def render(inp: RenderInput) -> str:
    """The full text of lbsplit.conf for one generation."""
    stage = inp.stage
    h = stage.hundredths
    on = stage.v2_enabled
    whitelist = inp.whitelist if on else ()
    included = inp.include_file if on and inp.include else None
    lua = inp.runtime == Runtime.LUA
    lua_split = lua and on  # the lua handler decides every request's variant from the live stage
    pool_lines: list[str] = []
    split = False
    if not on or h == 0:
        default_target = "lbsplit_v1"
    elif h == FULL:
        default_target = "lbsplit_v2"
    elif inp.mode == Mode.HASH:
        default_target = "$lbsplit_split"
        split = True
    else:
        w1, w2 = pool_weights(inp.v1, inp.v2, h)
        pool_lines = [s.line(w) for s, w in zip(inp.v1, w1)] + [s.line(w) for s, w in zip(inp.v2, w2)]
        default_target = "lbsplit_pool"
    percent = inp.percent_text or stage.percent
    forcing = on and bool(inp.force_header or inp.force_cookie)
    return _environment().get_template(ENTRY_TEMPLATE).render(
        generation=inp.generation,
        header=HEADER.format(generation=inp.generation, summary=summary(stage, inp.mode, percent)),
        load_line=LOAD_LINE.format(generation=inp.generation, stage=lua_stage(stage)),
        lua=lua,
        lua_split=lua_split,
        token_digest=inp.token_digest,
        control_path=CONTROL_PATH,
        percent=percent,
        mode=str(inp.mode),
        key=inp.key,
        fallback_key=inp.fallback_key,
        keepalive=inp.pooling.keepalive,
        keepalive_timeout=inp.pooling.keepalive_timeout,
        method=inp.pooling.method,
        v1_lines=[s.line() for s in inp.v1],
        v2_lines=[s.line() for s in inp.v2] if on else [],  # named at every stage: v1's servers when off
        pool_lines=pool_lines,
        split=split,
        default_target=default_target,
        whitelist_size=included.size if included else len(whitelist),
        whitelist_lines="" if included else whitelist_lines(whitelist),
        whitelist_include=inp.include if included else None,
        map_hash=included.map_hash if included else map_hash_size(whitelist),
        status_listen=inp.status_listen,
        status_percent=percent if on else "null",
        v2_json="true" if on else "false",
        log_format="\\t".join(LOG_FIELDS),
        owner=inp.owner,
        status_path=STATUS_PATH,
        v1_check_path=V1_CHECK_PATH,
        forcing=forcing,
        force_header=inp.force_header,
        force_cookie=inp.force_cookie,
        header_variable=header_variable(inp.force_header) if inp.force_header else "",
        cookie_variable=f"$cookie_{inp.force_cookie}" if inp.force_cookie else "",
        # With the override on, the whitelist map names the split's choice and one map more lets the override win.
        chosen="$lbsplit_chosen" if forcing and not lua else "$lbsplit_upstream",
    )


def header_variable(name: str) -> str:
    """nginx's variable for a request header: lower case, dashes as underscores."""
    return "$http_" + name.lower().replace("-", "_")


_FORCING = re.compile(r"^# QA override: header (\S+), cookie (\S+)\.$", re.MULTILINE)


def forcing_of(text: str) -> tuple[str | None, str | None]:
    """(header, cookie) the QA override of a rendered lbsplit.conf reads while v2 is on; None for none."""
    match = _FORCING.search(text[:1 << 16])
    if match is None:
        return None, None
    header, cookie = match.groups()
    return (None if header == "-" else header), (None if cookie == "-" else cookie)


# ---------------------------------------------------------------- reading it back
# crossplane parses the rendered text as an independent second check of its shape (escaping
# already makes injection impossible by construction); `nginx -t` remains the judge of validity.

SAMPLE_KEYS = 200  # whitelist lines that go through crossplane as well as the line check
# The map that holds the whitelist: $lbsplit_upstream itself, or in the lua runtime with v2 on,
# $lbsplit_whitelisted (then $lbsplit_upstream is a one-line map the lua handler overrides), or with
# the QA override on, $lbsplit_chosen (then $lbsplit_upstream maps $lbsplit_forced; the key is never lbsplit's).
_MAP_OPEN = re.compile(r"^map \$(?!lbsplit_)[A-Za-z_][A-Za-z0-9_]* \$(lbsplit_upstream|lbsplit_whitelisted|lbsplit_chosen) \{$",
                       re.MULTILINE)
# Lines of one quoted key each (only \\ and \" escapes inside, as map_key writes them).
_KEY_BLOCK = re.compile(r'(?:    "\\\\(?:[^"\\\x00-\x1f]++|\\["\\])*+" lbsplit_v2;\n)*+')
TOP_LEVEL = {"log_format", "map_hash_bucket_size", "map_hash_max_size", "upstream", "map", "split_clients", "server",
             "lua_shared_dict", "init_by_lua_block", "init_worker_by_lua_block", "rewrite_by_lua_block"}


def _parse(text: str) -> list[dict]:
    import crossplane  # only a render that installs pays for it

    fd, path = tempfile.mkstemp(prefix="lbsplit-check-", suffix=".conf")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        payload = crossplane.parse(path, single=True, check_ctx=False, check_args=False, strict=False, comments=False)
    finally:
        os.unlink(path)
    if payload["errors"]:
        raise StructureError(f"rendered config does not parse: {payload['errors'][0]['error']}")
    return payload["config"][0]["parsed"]


def _check_key_lines(block: str, size: int, where: str) -> None:
    """Raise StructureError unless `block` is exactly `size` whitelist lines as map_key writes them."""
    count = block.count("\n")
    if count != size:
        raise StructureError(f"{where} has {count} whitelist lines, expected {size}")
    if not _KEY_BLOCK.fullmatch(block):
        bad = next(line for line in block.split("\n") if not _KEY_BLOCK.fullmatch(line + "\n"))
        raise StructureError(f"a whitelist line of {where} is not one quoted key: {bad[:80]!r}")


def check_whitelist_text(text: str, size: int) -> None:
    """Raise StructureError unless `text` is a whitelist map file of `size` ids."""
    _check_key_lines(text, size, "the whitelist map file")


_INCLUDE_LINE = re.compile(r"^    include (/\S+/" + WHITELIST_DIR + r"/whitelist-[0-9a-f]{32}\.map);\n", re.MULTILINE)


def include_of(text: str) -> str | None:
    """The whitelist map file a rendered lbsplit.conf includes, or None (inline or no whitelist)."""
    match = _INCLUDE_LINE.search(text)
    return match.group(1) if match else None


def check_shape(text: str) -> None:
    """check_structure for any lbsplit.conf (inline or included whitelist), e.g. a backup to restore."""
    include = include_of(text)
    check_structure(text, 0 if include else len(whitelist_ids(text)), include=include is not None)


def _split_keys(text: str, whitelist_size: int, include: bool = False) -> tuple[str, int]:
    """Check every whitelist line with a strict regex; return the text with only a sample of them.

    crossplane is a pure-Python lexer: 40 s for a million keys. The regex check is exact
    for the one line shape render writes, and crossplane still parses everything else.
    """
    opening = list(_MAP_OPEN.finditer(text))
    if len(opening) != 1:
        raise StructureError("rendered config must define its whitelist map exactly once")
    default_end = text.index("\n", opening[0].end() + 1) + 1  # skip the "default ...;" line
    if include:  # then the include line
        found = _INCLUDE_LINE.match(text, default_end)
        if found is None:
            raise StructureError("$lbsplit_upstream map must include its whitelist file right after default")
        default_end = found.end()
    end = text.index("\n}\n", default_end - 1) + 1
    block = text[default_end:end]
    _check_key_lines(block, whitelist_size, "the $lbsplit_upstream map")
    count = whitelist_size
    sample_end = default_end
    for _ in range(min(SAMPLE_KEYS, count)):
        sample_end = text.index("\n", sample_end) + 1
    return text[:sample_end] + text[end:], min(SAMPLE_KEYS, count)


def check_structure(text: str, whitelist_size: int, include: bool = False) -> None:
    """Raise StructureError unless `text` is one lbsplit.conf with `whitelist_size` inline whitelist keys
    (and, with `include`, the include of its whitelist file)."""
    text, whitelist_size = _split_keys(text, whitelist_size, include)
    parsed = _parse(text)
    names = [d["directive"] for d in parsed]
    unexpected = sorted(set(names) - TOP_LEVEL)
    if unexpected:
        raise StructureError(f"rendered config has unexpected top-level directives: {unexpected}")
    maps = [d for d in parsed if d["directive"] == "map"]
    upstream_maps = [d for d in maps if d["args"][-1] == "$lbsplit_upstream"]
    if len(upstream_maps) != 1:
        raise StructureError("rendered config must define $lbsplit_upstream exactly once")
    holders = [d for d in maps if d["args"][-1] in ("$lbsplit_whitelisted", "$lbsplit_chosen")] or upstream_maps
    if len(holders) != 1:
        raise StructureError("rendered config must define its whitelist map ($lbsplit_whitelisted or "
                             "$lbsplit_chosen) at most once")
    entries = [e for e in holders[0]["block"] if not (include and e["directive"] == "include")]
    if include and len(entries) != len(holders[0]["block"]) - 1:
        raise StructureError("$lbsplit_upstream map must include exactly one whitelist file")
    if len(entries) != whitelist_size + 1 or any(len(e["args"]) != 1 for e in entries):
        raise StructureError(
            f"$lbsplit_upstream map has {len(entries)} entries, expected {whitelist_size + 1} "
            "(default plus one per whitelisted id)"
        )
    for d in parsed:
        if d["directive"] == "upstream":
            if any(s["directive"] not in UPSTREAM_DIRECTIVES for s in d.get("block", [])):
                raise StructureError(f"upstream {d['args']} contains something other than server lines and "
                                     "upstreams.keepalive/keepalive_timeout/method")
        if d["directive"] == "server":
            inner = {s["directive"] for s in d.get("block", [])}
            if not inner <= {"listen", "access_log", "location"}:
                raise StructureError(f"status server contains unexpected directives: {sorted(inner)}")


_KEY_LINE = re.compile(r'^    "\\\\((?:[^"\\]|\\.)*)" lbsplit_v2;$')


def whitelist_ids(text: str) -> list[str]:
    """The whitelist ids of a rendered lbsplit.conf, unescaped: what nginx really has."""
    ids = []
    for line in text.splitlines():
        match = _KEY_LINE.match(line)
        if match:
            ids.append(re.sub(r"\\(.)", r"\1", match.group(1)))
    return ids


_OWNER_LINE = re.compile(r"^# Owner: (\S+) ", re.MULTILINE)


_STATUS_LISTEN = re.compile(r"^# lbsplit asks this page which generation nginx serves after a reload\.\n"
                            r"server \{\n    listen ([^\s;]+);$", re.MULTILINE)


def status_listen_of(text: str) -> str | None:
    """The address lbsplit's status server listens on in a rendered lbsplit.conf, or None."""
    match = _STATUS_LISTEN.search(text)
    return match.group(1) if match else None


def owner_of(text: str) -> str | None:
    """The owner a rendered lbsplit.conf names, or None (a file from before owners were written)."""
    match = _OWNER_LINE.search(text[:2000])
    return match.group(1) if match else None


def reports_stage(answer: dict | None, generation: int, stage: Stage) -> bool:
    """Does a status page answer report this generation at this stage (percent null when v2 is off)?

    The generation alone is not enough: in the lua runtime the live stage can be set apart from it.
    """
    if not isinstance(answer, dict) or answer.get("generation") != generation or answer.get("v2") is not stage.v2_enabled:
        return False
    percent = answer.get("percent")
    if not stage.v2_enabled:
        return percent is None
    return isinstance(percent, (int, float)) and not isinstance(percent, bool) and round(percent * 100) == stage.hundredths


def answered_stage(answer: dict | None) -> Stage | None:
    """The stage a status answer says nginx serves (both runtimes), or None when it does not say."""
    if not isinstance(answer, dict) or not isinstance(answer.get("v2"), bool):
        return None
    if not answer["v2"]:
        return Stage.off()
    percent = answer.get("percent")
    if isinstance(percent, bool) or not isinstance(percent, (int, float)) or not 0 <= percent <= 100:
        return None
    return Stage.at(round(percent * 100))


def parse_status(body: bytes) -> dict | None:
    """The status page's answer as a dict, or None when it is not one of ours."""
    try:
        answer = json.loads(body)
    except ValueError:
        return None
    if not isinstance(answer, dict) or not isinstance(answer.get("generation"), int):
        return None
    return answer
