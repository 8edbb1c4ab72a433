"""`lbsplit route` reimplements split_clients; these tests hold it to nginx's own answers."""

import json
import random
import string
import uuid

import pytest

from conftest import run_cli
from lbsplit.nginx.hashing import in_v2_bucket, murmur2, v2_bound
from lbsplit.model import Mode, Stage
from harness import pipelined_variants
from lbsplit.nginx.dialect import whitelist_ids
from lbsplit.nginx.route import explain, folded_keys
from lbsplit.validate import fold_case


def sample_ids(n: int, seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-_.:@!*+=/~é中文ü"
    ids = []
    for i in range(n):
        kind = i % 4
        if kind == 0:
            ids.append(str(rng.randrange(10**12)))
        elif kind == 1:
            ids.append(str(uuid.UUID(int=rng.getrandbits(128))))
        elif kind == 2:
            ids.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))))
        else:
            ids.append(f"o{rng.getrandbits(64):x}用户")
    return ids


def test_murmur2_reference_values():
    # The empty string hashes to 0 (why lbsplit replaces an empty id with the fallback key).
    assert murmur2(b"") == 0
    assert v2_bound(10000) == 0xFFFFFFFF
    assert v2_bound(1000) == 429496729


def test_route_agrees_with_nginx_on_10000_ids_at_several_percents(sandbox):
    ids = list(dict.fromkeys(sample_ids(10_100)))[:10_000]
    assert len(ids) == 10_000
    for percent, hundredths in (("1", 100), ("33.33", 3333), ("99.5", 9950)):
        assert run_cli(sandbox.config_path, "apply", percent).returncode == 0
        observed = pipelined_variants(sandbox.port, ids)
        predicted = [explain(i, Stage.at(hundredths), Mode.HASH, set(), None).variant for i in ids]
        mismatches = [(i, o, p) for i, o, p in zip(ids, observed, predicted) if o != p]
        assert mismatches == [], f"{len(mismatches)} mismatches at {percent}%, e.g. {mismatches[:3]}"


def test_route_command_explains_whitelist_hash_and_revert(sandbox):
    assert run_cli(sandbox.config_path, "apply", "30").returncode == 0
    answer = json.loads(run_cli(sandbox.config_path, "route", "TEST_USER_001", "--json").stdout)
    assert answer["variant"] == "v2" and answer["whitelisted"] is True
    assert sandbox.variants(["TEST_USER_001"]) == ["v2"]
    for user in ("alice", "bob", "carol", "dave", "用户"):
        answer = json.loads(run_cli(sandbox.config_path, "route", user, "--json").stdout)
        assert sandbox.variants([user]) == [answer["variant"]]
        assert answer["variant"] == ("v2" if in_v2_bucket(user.encode(), 3000) else "v1")
    # no id: nginx hashes $remote_addr, which is 127.0.0.1 here
    answer = json.loads(run_cli(sandbox.config_path, "route", "", "--fallback", "127.0.0.1", "--json").stdout)
    assert sandbox.variants([None]) == [answer["variant"]]
    assert run_cli(sandbox.config_path, "revert").returncode == 0
    answer = json.loads(run_cli(sandbox.config_path, "route", "test_user_001", "--json").stdout)
    assert answer["variant"] == "v1" and "reverted" in answer["reason"]


def test_whitelist_keys_read_back_from_the_rendered_file():
    from lbsplit.nginx.dialect import RenderInput, render
    from lbsplit.model import Server

    ids = ("plain", 'q"uote', "back\\slash", "default", "Mixed")
    text = render(RenderInput(1, Stage.at(1000), "hash", "$http_x_user_id", "$remote_addr",
                              (Server("a:1"),), (Server("b:1"),), ids, "127.0.0.1:9181"))
    assert folded_keys(whitelist_ids(text)) == {fold_case(i) for i in ids}


@pytest.mark.parametrize("hundredths, variant", [(0, "v1"), (10000, "v2")])
def test_edges_need_no_hash(hundredths, variant):
    assert explain("anyone", Stage.at(hundredths), "hash", set(), None).variant == variant


def test_weight_mode_is_per_request():
    assert explain("anyone", Stage.at(3000), "weight", set(), None).variant == "either"
