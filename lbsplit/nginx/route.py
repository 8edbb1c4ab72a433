"""Which variant a user gets, and why. Pure: the stage, mode and whitelist are parameters."""

from __future__ import annotations

from dataclasses import asdict, dataclass

from ..model import DEFAULT_FALLBACK_KEY, FULL, Mode, Stage, Variant
from ..validate import fold_case
from .hashing import MASK, murmur2, v2_bound


@dataclass(frozen=True)
class Route:
    user_id: str
    variant: Variant
    reason: str
    percent: str | None
    whitelisted: bool
    hashed_key: str | None = None
    hash: int | None = None
    bucket_position: float | None = None  # hash / 2^32, compared with percent / 100
    boundary: int | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def folded_keys(ids) -> set[bytes]:
    """Whitelist ids as nginx's map compares them (case-folded)."""
    return {fold_case(i) for i in ids}


@dataclass(frozen=True)
class Forcing:
    """The QA override a request carries: the names nginx reads, and the values this request sends."""

    header: str | None = None  # the header's name (None: not configured)
    cookie: str | None = None
    header_value: str | None = None  # what the request sends there (None: nothing)
    cookie_value: str | None = None

    def choice(self) -> tuple[Variant, str] | None:
        """The variant the override picks, and where it came from; None when it picks nothing.
        The header wins over the cookie; values compare as nginx's map does (case-insensitive)."""
        for name, value, what in ((self.header, self.header_value, "header"), (self.cookie, self.cookie_value, "cookie")):
            if name and value is not None and value.strip().lower() in ("v1", "v2"):
                return Variant(value.strip().lower()), f"the {name} {what} says {value.strip().lower()}"
        return None


def explain(user_id: str, stage: Stage, mode: Mode, whitelist: set[bytes], fallback: str | None,
            fallback_name: str = DEFAULT_FALLBACK_KEY, forcing: Forcing = Forcing()) -> Route:
    """Decide like nginx: the QA override first, then the whitelist map, then split_clients on the id
    (or the fallback key)."""
    percent = stage.percent if stage.v2_enabled else None
    forced = forcing.choice()
    if not stage.v2_enabled:
        note = f" ({forced[1]}, but a revert turns the QA override off too)" if forced else ""
        return Route(user_id, Variant.V1, f"v2 is off (reverted): everyone is on v1{note}", None, False)
    if forced:
        return Route(user_id, forced[0], f"{forced[1]}: the QA override wins over the whitelist and the split",
                     percent, False)
    folded = fold_case(user_id)
    if user_id and folded in whitelist:
        return Route(user_id, Variant.V2, "whitelisted (nginx matches whitelist ids case-insensitively)", percent, True)
    h = stage.hundredths
    if h == 0:
        return Route(user_id, Variant.V1, "not whitelisted, and 0% of other users are on v2", percent, False)
    if h == FULL:
        return Route(user_id, Variant.V2, "100% of users are on v2", percent, False)
    if mode == Mode.WEIGHT:
        return Route(user_id, Variant.EITHER, f"weight mode: each request goes to v2 with probability {percent}%", percent, False)
    if user_id:
        key, source = user_id, "the user id"
    elif fallback is not None:
        key, source = fallback, f"the fallback key {fallback_name} (the id is empty)"
    else:
        return Route(user_id, Variant.EITHER, f"the id is empty: nginx hashes {fallback_name} instead; pass its value with --fallback",
                     percent, False)
    value = murmur2(key.encode("utf-8"))
    bound = v2_bound(h)
    position = value / (MASK + 1)
    variant = Variant.V2 if value < bound else Variant.V1
    relation = "below" if variant == Variant.V2 else "at or above"
    return Route(
        user_id, variant,
        f"hash of {source} sits at {position * 100:.4f}% of the ring, {relation} the {percent}% boundary",
        percent, False, hashed_key=key, hash=value, bucket_position=position, boundary=bound,
    )
