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


def explain(user_id: str, stage: Stage, mode: Mode, whitelist: set[bytes], fallback: str | None,
            fallback_name: str = DEFAULT_FALLBACK_KEY) -> Route:
    """Decide like nginx: whitelist map first, then split_clients on the id (or the fallback key)."""
    percent = stage.percent if stage.v2_enabled else None
    if not stage.v2_enabled:
        return Route(user_id, Variant.V1, "v2 is off (reverted): everyone is on v1", None, False)
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
