"""What a change will write: the validated stage, rendered from a cached skeleton.

It touches nothing nginx serves; it does write its own caches in state_dir (the render cache, and the
lua runtime's control.token on first use).

`plan` validates everything a stage needs (the whitelist through its cache) and returns a
Plan that renders lbsplit.conf for any generation; `render_text` and `dry_run_diff` are the
read-only views `lbsplit render` and `apply --dry-run` show.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from ..config import Settings
from ..errors import ConfigError
from ..model import DEFAULT_FALLBACK_KEY, DEFAULT_KEY, DEFAULT_MODE, FULL, Mode, Runtime, Stage
from ..nginx.dialect import (
    WHITELIST_DIR,
    MapHashSize,
    RenderInput,
    WhitelistFile,
    check_structure,
    render,
    render_key,
    restage,
)
from ..validate import fallback_warning
from . import files, rendercache, wlcache
from .state import StateStore


def share(stage: Stage, mode: Mode) -> str:
    """Who is on v2, in the user's words: weight mode splits requests, hash mode splits users."""
    if not stage.v2_enabled:
        return "everyone on v1"
    if stage.hundredths == 0:
        return "the whitelist only"
    if stage.hundredths == FULL:
        return "everyone"
    return f"the whitelist plus {stage.percent}% of {'requests' if mode == Mode.WEIGHT else 'users'}"


GENERATION_MARKER = "\0generation\0"
PERCENT_MARKER = "\0percent\0"
# The whitelist's map file: its path, its size and the map hash sizes it needs, so a whitelist
# change (a new file name) fills strings into the same skeleton instead of rendering again.
INCLUDE_MARKER = "\0include\0"
SIZE_MARKER = "\0size\0"
BUCKET_MARKER = "\0bucket\0"
MAX_MARKER = "\0max\0"


@dataclass(frozen=True)
class Plan:
    """A validated stage, ready to render for any generation number."""

    stage: Stage
    inputs: RenderInput
    warnings: tuple[str, ...]
    whitelist: wlcache.Resolved | None = None
    cache: rendercache.RenderCache | None = None

    @functools.cached_property
    def _skeleton(self) -> tuple[RenderInput, dict[str, str]]:
        """The inputs with markers where the generation, the percentage and the whitelist's file go,
        and what each marker stands for in this plan (the generation is filled in by text()).

        One skeleton serves every generation, every split percentage (hash mode between 0 and
        100%) and every non-empty whitelist of the same map-hash shape: a percent or whitelist
        change fills in strings instead of rendering (and importing jinja2) again. The markers
        hold NUL bytes, which no validated id, server, key or path can contain.
        """
        inputs, fills = dataclasses.replace(self.inputs, generation=GENERATION_MARKER), {}
        found = inputs.include_file
        if found is not None and inputs.include is not None:
            marked_hash = None if found.map_hash is None else MapHashSize(BUCKET_MARKER, MAX_MARKER)  # type: ignore[arg-type]
            inputs = dataclasses.replace(inputs, include=INCLUDE_MARKER,
                                         include_file=WhitelistFile(INCLUDE_MARKER, SIZE_MARKER, marked_hash))  # type: ignore[arg-type]
            fills.update({INCLUDE_MARKER: str(self.inputs.include), SIZE_MARKER: str(found.size)})
            if found.map_hash is not None:
                fills.update({BUCKET_MARKER: str(found.map_hash.bucket_size), MAX_MARKER: str(found.map_hash.max_size)})
        h = self.stage.hundredths
        if self.lua:  # one skeleton for every stage with v2 on; restage() writes the stage in
            inputs = dataclasses.replace(inputs, stage=Stage.at(5000))
        elif self.stage.v2_enabled and 0 < h < FULL and self.inputs.mode == Mode.HASH:
            inputs = dataclasses.replace(inputs, stage=Stage.at(5000), percent_text=PERCENT_MARKER)
            fills[PERCENT_MARKER] = self.stage.percent
        return inputs, fills

    @functools.cached_property
    def _unfilled(self) -> str:
        skeleton, _ = self._skeleton
        text = self.cache.get(skeleton) if self.cache else None
        if text is None:
            text = render(skeleton)
            if self.cache:
                self.cache.put(skeleton, text)
        return text

    @functools.cached_property
    def _template(self) -> str:
        text = self._unfilled
        for marker, value in self._skeleton[1].items():
            text = text.replace(marker, value)
        return text

    def skeleton_key(self) -> str:
        """What the text is besides its generation, percentage and whitelist file: texts with one key differ only there."""
        return render_key(self._skeleton[0])

    @property
    def lua(self) -> bool:
        """The lua runtime with v2 on: the stage lives in two lines, not in the file's structure."""
        return self.inputs.runtime == Runtime.LUA and self.stage.v2_enabled

    def text(self, generation: int) -> str:
        if self.lua:
            return restage(self._template, generation, self.stage, self.inputs.mode)
        return self._template.replace(GENERATION_MARKER, str(generation))

    def checked_text(self, generation: int) -> str:
        """The text, parsed back and checked for shape: what apply installs.

        A long-lived process (the fleet agent) parses each shape once: texts from the same
        skeleton text whose fills differ only in numbers (generation, percentage, sizes) have
        the same structure.
        """
        text = self.text(generation)
        _, fills = self._skeleton
        shape = (hashlib.sha256(self._unfilled.encode("utf-8", "surrogatepass")).digest(),
                 tuple(v for v in fills.values() if not _NUMBER.fullmatch(v)),
                 len(self.inputs.whitelist), self.inputs.include is not None)
        if shape not in _SHAPES_CHECKED:
            check_structure(text, len(self.inputs.whitelist), include=self.inputs.include is not None)
            _SHAPES_CHECKED.add(shape)
        return text


_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?")
_SHAPES_CHECKED: set[tuple] = set()  # in this process: skeleton shapes whose filled texts passed check_structure


def whitelist_dir(settings: Settings) -> Path:
    return settings.nginx.output_dir / WHITELIST_DIR


def plan(settings: Settings, stage: Stage, use_cache: bool = True, remember: bool = False) -> Plan:
    """Validate everything the stage needs. Touches nothing nginx serves; with `remember` it writes the lua
    runtime's control token and the render cache in state_dir (see the module's docstring)."""
    resolved, include = None, None
    store = StateStore(settings.state_dir)
    if stage.v2_enabled:
        v2, split = settings.require_rollout()
        resolved = wlcache.resolve(settings.state_dir, settings.nginx.output_dir, split, use_cache)
        if resolved.file is not None:
            include = str(whitelist_dir(settings) / resolved.file.name)
        ids, warnings, mode, key, fallback = (), resolved.warnings, split.mode, split.key, split.fallback_key
    else:
        # A revert needs nothing but v1: a broken [split], v2 or whitelist file must not stop it.
        v2, ids, warnings = (), (), ()
        split = settings.split
        mode = split.mode if split else DEFAULT_MODE
        key = split.key if split else DEFAULT_KEY
        fallback = split.fallback_key if split else DEFAULT_FALLBACK_KEY
    inputs = RenderInput(
        generation=0,
        stage=stage,
        mode=mode,
        key=key,
        fallback_key=fallback,
        v1=settings.v1,
        v2=v2,
        whitelist=ids,
        status_listen=settings.nginx.status_listen,
        owner=store.owner,
        include=include,
        runtime=settings.nginx.runtime,
        token_digest=store.token_digest(create=remember) if settings.nginx.runtime == Runtime.LUA else "-",
        include_file=resolved.file if resolved else None,
        pooling=settings.pooling,
        force_header=(split.force_header or "") if stage.v2_enabled else "",
        force_cookie=(split.force_cookie or "") if stage.v2_enabled else "",
    )
    if stage.v2_enabled and stage.hundredths not in (0, FULL) and mode == Mode.HASH:
        fallback_problem = fallback_warning(fallback)
        if fallback_problem:
            warnings = (*warnings, fallback_problem)
    cache = rendercache.RenderCache(settings.state_dir, write=remember) if use_cache else None
    return Plan(stage=stage, inputs=inputs, warnings=tuple(warnings), whitelist=resolved, cache=cache)


def render_text(settings: Settings, stage: Stage, map_file: bool = False) -> tuple[str, tuple[str, ...]]:
    """What apply would write for `stage` (with the next generation number), and its warnings.

    With `map_file`, the whitelist's map file instead of lbsplit.conf.
    """
    prepared = plan(settings, stage, use_cache=not map_file)
    if map_file:
        found = prepared.whitelist.file if prepared.whitelist else None
        if found is None:
            why = ("v2 off includes no whitelist" if not stage.v2_enabled else
                   "the whitelist is empty")
            raise ConfigError(f"--whitelist-file: there is no whitelist map file at {stage.describe()} ({why}); "
                              "run `lbsplit render PERCENT` without it")
        return found.text, prepared.warnings
    return prepared.checked_text(StateStore(settings.state_dir).last_generation() + 1), prepared.warnings


@dataclass(frozen=True)
class DryRun:
    diff: str
    warnings: tuple[str, ...]


def dry_run_diff(settings: Settings, stage: Stage) -> DryRun:
    """A unified diff of the live file against what apply would write. Touches nothing."""
    prepared = plan(settings, stage)
    live = settings.nginx.live_file
    store = StateStore(settings.state_dir)
    state = store.read_state_or_none()
    old = (files.read_bytes(live) or b"").decode("utf-8", errors="replace")
    if state is not None and prepared.text(state.generation) == old:
        return DryRun(f"already live: generation {state.generation} (v2 {stage.describe()}); nothing would change\n",
                      prepared.warnings)
    new = prepared.checked_text(store.last_generation() + 1)
    diff = "".join(
        difflib.unified_diff(old.splitlines(True), new.splitlines(True), f"{live} (live)", f"{live} (apply {stage.describe()})")
    )
    return DryRun(diff or "no difference\n", prepared.warnings)
