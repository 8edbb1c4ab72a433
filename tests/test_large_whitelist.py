"""Large whitelists on real nginx: lbsplit sizes the map hash itself; nginx never fails to build it."""

import random
import uuid

import pytest

from conftest import run_cli


def ids_of(kind: str, n: int, seed: int = 3) -> list[str]:
    rng = random.Random(seed)
    if kind == "uuid":
        return [str(uuid.UUID(int=rng.getrandbits(128))) for _ in range(n)]
    return [str(rng.randrange(10**9, 10**10)) for _ in range(n)]


def apply_whitelist(sb, ids):
    (sb.root / "wl.txt").write_text("\n".join(ids) + "\n")
    sb.write_config(extra='whitelist_file = "wl.txt"\n')
    result = run_cli(sb.config_path, "apply", "0", timeout=300)
    assert result.returncode == 0, result.stderr
    return result


def check(sb, ids):
    rng = random.Random(5)
    sample = rng.sample(ids, 200)
    assert sb.variants(sample) == ["v2"] * 200  # apply 0: only the whitelist is on v2
    log = (sb.front.prefix / "error.log").read_text()
    assert "could not build" not in log and "map_hash" not in log


@pytest.mark.parametrize("kind", ["uuid", "digits"])
def test_100k_whitelist_applies_without_touching_nginx_settings(sandbox, kind):
    ids = ids_of(kind, 100_000)
    apply_whitelist(sandbox, ids)
    check(sandbox, ids)
    assert sandbox.variants(["not-on-the-list"]) == ["v1"]


def test_ids_longer_than_nginx_default_bucket_allows(sandbox):
    ids = [f"{'x' * 200}-{i}" for i in range(50)]
    apply_whitelist(sandbox, ids)
    assert sandbox.variants(ids[:10]) == ["v2"] * 10


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["uuid", "digits"])
def test_1m_whitelist_applies(sandbox, kind):
    ids = list(dict.fromkeys(ids_of(kind, 1_000_000)))
    apply_whitelist(sandbox, ids)
    check(sandbox, ids)
