"""Rendering: golden files for each mode and stage, escaping, weights, hash sizing."""

import os
from pathlib import Path

import pytest
from hypothesis import given, strategies as st

from lbsplit.errors import StructureError
from lbsplit.nginx.dialect import check_structure
from lbsplit.model import Server, Stage
from lbsplit.nginx.dialect import RenderInput, map_hash_size, map_key, pool_weights, render

GOLDEN = Path(__file__).parent / "golden"
V1 = (Server("10.0.0.1:8080"), Server("10.0.0.2:8080", max_fails=3, fail_timeout="10s"))
V2 = (Server("10.0.1.1:8080"),)
WHITELIST = ("test_user_001", "test_user_002", "internal_staff_001")


def inputs(stage: Stage, mode: str = "hash", whitelist=WHITELIST, v1=V1, v2=V2) -> RenderInput:
    return RenderInput(
        generation=7,
        stage=stage,
        mode=mode,
        key="$http_x_user_id",
        fallback_key="$remote_addr",
        v1=v1,
        v2=v2,
        whitelist=whitelist,
        status_listen="127.0.0.1:9181",
    )


CASES = {
    "hash-10": inputs(Stage.at(1000)),
    "hash-33.33": inputs(Stage.at(3333)),
    "hash-0": inputs(Stage.at(0)),
    "hash-100": inputs(Stage.at(10000)),
    "weight-30": inputs(Stage.at(3000), mode="weight"),
    "weight-0": inputs(Stage.at(0), mode="weight"),
    "weight-100": inputs(Stage.at(10000), mode="weight"),
    "off": inputs(Stage.off(), whitelist=()),
    "hash-10-no-whitelist": inputs(Stage.at(1000), whitelist=()),
    "hash-30-forcing": RenderInput(**{**inputs(Stage.at(3000)).__dict__, "force_header": "X-Lbsplit-Variant",
                                      "force_cookie": "lbsplit_variant"}),
    "weight-30-forcing-header": RenderInput(**{**inputs(Stage.at(3000), mode="weight").__dict__,
                                               "force_header": "X-Lbsplit-Variant"}),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_render_matches_golden_file(name):
    text = render(CASES[name])
    path = GOLDEN / f"{name}.conf"
    if os.environ.get("UPDATE_GOLDEN"):
        path.write_text(text)
    assert text == path.read_text()
    check_structure(text, len(CASES[name].whitelist) if CASES[name].stage.v2_enabled else 0)


def test_off_stage_never_mentions_v2_or_the_whitelist():
    text = render(inputs(Stage.off(), whitelist=WHITELIST))
    # The name lbsplit_v2 stays defined (a site may name it), but holds only v1's servers; nothing routes to it.
    assert "lbsplit_v2;" not in text and "default lbsplit_v1;" in text
    assert "10.0.1.1" not in text
    assert "test_user_001" not in text


def test_zero_percent_keeps_the_whitelist_on_v2():
    text = render(inputs(Stage.at(0)))
    assert "split_clients" not in text
    assert '"\\\\test_user_001" lbsplit_v2;' in text
    assert "default lbsplit_v1;" in text


@pytest.mark.parametrize(
    "user_id, key",
    [
        ("plain", r'"\\plain"'),
        ("default", r'"\\default"'),
        ('a"b', r'"\\a\"b"'),
        ("a\\b", r'"\\a\\b"'),
        ("~.*", r'"\\~.*"'),
    ],
)
def test_map_keys_are_quoted_and_backslash_prefixed(user_id, key):
    assert map_key(user_id) == key


@pytest.mark.parametrize("user_id", ['x" lbsplit_v2; default lbsplit_v2; "', "a;}server{listen 80;}", "$remote_addr", "include", "#c", "{"])
def test_hostile_ids_stay_one_map_entry(user_id):
    text = render(inputs(Stage.at(1000), whitelist=(user_id,)))
    check_structure(text, 1)  # exactly default + one key; nothing injected


@given(
    st.lists(st.integers(1, 20), min_size=1, max_size=4),
    st.lists(st.integers(1, 20), min_size=1, max_size=4),
    st.integers(1, 9999),
)
def test_pool_weights_give_exact_shares(w1, w2, hundredths):
    v1 = tuple(Server(f"10.0.0.{i}:80", weight=w) for i, w in enumerate(w1))
    v2 = tuple(Server(f"10.0.1.{i}:80", weight=w) for i, w in enumerate(w2))
    a, b = pool_weights(v1, v2, hundredths)
    assert all(w >= 1 for w in a + b)
    # v2's share of the pool is exactly hundredths/10000
    assert sum(b) * 10000 == hundredths * (sum(a) + sum(b))
    # and each pool keeps its own internal proportions
    assert all(x * w1[0] == a[0] * y for x, y in zip(a, w1))
    assert all(x * w2[0] == b[0] * y for x, y in zip(b, w2))


def test_pool_weights_ignore_backup_and_down_servers_for_the_share():
    v1 = (Server("a:1"), Server("b:1", backup=True))
    v2 = (Server("c:1"), Server("d:1", down=True))
    a, b = pool_weights(v1, v2, 2500)
    assert (a[0], b[0]) == (3, 1)


def test_small_short_whitelists_leave_nginx_hash_defaults_alone():
    assert map_hash_size(WHITELIST) is None
    assert map_hash_size(()) is None


def test_long_ids_get_a_bucket_that_fits_them():
    size = map_hash_size(("x" * 47,))
    assert size is not None and size.bucket_size >= 64
    size = map_hash_size(("x" * 255,))
    assert size.bucket_size >= 8 + 264 + 8


def test_structure_check_catches_a_doctored_whitelist_line():
    text = render(inputs(Stage.at(1000)))
    doctored = text.replace('"\\\\test_user_002" lbsplit_v2;', '"\\\\x" lbsplit_v2; include /etc/passwd;')
    with pytest.raises(StructureError, match="not one quoted key"):
        check_structure(doctored, 3)
    with pytest.raises(StructureError, match="expected 4"):
        check_structure(text, 4)
    extra = text.replace("upstream lbsplit_v1 {", "include /etc/nginx/other.conf;\nupstream lbsplit_v1 {")
    with pytest.raises(StructureError, match="unexpected top-level"):
        check_structure(extra, 3)


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs")), min_size=1, max_size=20), max_size=30))
def test_whitelist_lines_equal_one_map_key_per_line(ids):
    from lbsplit.nginx.dialect import whitelist_lines

    assert whitelist_lines(tuple(ids)) == "".join(f"    {map_key(i)} lbsplit_v2;\n" for i in ids)


def defined_names(text: str) -> set[str]:
    """Every variable, upstream and log format a rendered lbsplit.conf defines, read back with crossplane."""
    from lbsplit.nginx.dialect import _parse

    names = set()
    for d in _parse(text):
        if d["directive"] in ("map", "split_clients"):
            names.add(d["args"][-1])
        elif d["directive"] in ("upstream", "log_format"):
            names.add(f"{d['directive']} {d['args'][0]}")
    return names


@pytest.mark.parametrize("runtime", ["reload", "lua"])
def test_every_name_lbsplit_conf_defines_at_one_stage_it_defines_at_every_stage(runtime):
    """A site that logs $lbsplit_key or names upstream lbsplit_v2 must pass nginx -t after a revert too."""
    import dataclasses

    modes = ("hash",) if runtime == "lua" else ("hash", "weight")
    stages = [Stage.off(), Stage.at(0), Stage.at(1000), Stage.at(3333), Stage.at(10000)]
    found = {}
    for mode in modes:
        for stage in stages:
            for whitelist in (WHITELIST, ()):
                inp = dataclasses.replace(inputs(stage, mode=mode, whitelist=whitelist), runtime=runtime,
                                          token_digest="x" * 28)
                found[(mode, stage.describe(), bool(whitelist))] = defined_names(render(inp))
    union = set().union(*found.values())
    assert {"$lbsplit_key", "$lbsplit_split", "$lbsplit_upstream", "upstream lbsplit_v1", "upstream lbsplit_v2",
            "upstream lbsplit_pool", "log_format lbsplit"} <= union
    assert {case: sorted(union - names) for case, names in found.items() if union - names} == {}
