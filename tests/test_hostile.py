"""Hostile input, generated: every value either fails with an error naming its field, or renders a
config that real nginx accepts and that routes as intended. Never an injected directive, never a traceback."""

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from lbsplit.nginx.dialect import check_structure
from lbsplit.config import NginxSettings
from lbsplit.errors import ConfigError
from lbsplit.model import Server, Stage
from lbsplit.nginx.process import Nginx
from lbsplit.nginx.dialect import RenderInput, render
from lbsplit.nginx.dialect import whitelist_ids
from lbsplit.nginx.route import folded_keys
from lbsplit.validate import check_variable, fold_case, parse_server
from lbsplit.whitelist import parse as parse_whitelist

from conftest import run_cli

NASTY = st.sampled_from(list('"\';{}$#\\ \t\r\n\x00\x1b~*') + ["default", "include", "hostnames", "volatile", "é", "中", "\u2028"])
HOSTILE_TEXT = st.lists(st.one_of(NASTY, st.text(min_size=1, max_size=6)), min_size=1, max_size=12).map("".join)
LONG_TEXT = st.text(min_size=240, max_size=300)


def snippet_test(text: str, nginx_bin: str, tmp_path) -> str | None:
    settings = NginxSettings(binary=nginx_bin, conf=tmp_path / "unused.conf", prefix=None, output_dir=tmp_path,
                             reload_command=(), status_listen="127.0.0.1:9181", verify_timeout=5, pid_file=None)
    return Nginx(settings).test_snippet(text)


def rendered(ids=(), v1=(Server("127.0.0.1:8001"),), key="$http_x_user_id", stage=Stage.at(0)) -> str:
    return render(RenderInput(1, stage, "hash", key, "$remote_addr", v1, (Server("127.0.0.1:8002"),), tuple(ids),
                              "127.0.0.1:9181"))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.one_of(HOSTILE_TEXT, LONG_TEXT), min_size=1, max_size=15))
def test_generated_whitelist_ids_are_rejected_by_name_or_accepted_by_nginx(nginx_bin, tmp_path, ids):
    entries = [("split.whitelist", i, user_id) for i, user_id in enumerate(ids)]
    try:
        wl = parse_whitelist(entries)
    except ConfigError as e:
        message = str(e)
        assert message.startswith("whitelist: ") and "split.whitelist[" in message
        return
    text = rendered(wl.ids)
    check_structure(text, len(wl.ids))
    assert folded_keys(whitelist_ids(text)) == {fold_case(i) for i in ids}  # every id, and nothing else, maps to v2
    assert snippet_test(text, nginx_bin, tmp_path) is None


@settings(max_examples=60, deadline=None)
@given(st.one_of(HOSTILE_TEXT, st.from_regex(r"\A[a-z0-9.:\[\]]{1,20}:\d{1,6}( [a-z_]+=?[0-9a-z]*){0,3}\Z")))
def test_generated_server_lines_are_rejected_by_name_or_render_one_server(line):
    try:
        server = parse_server(line, "upstreams.v1[0]")
    except ConfigError as e:
        assert str(e).startswith("upstreams.v1[0]: ")
        return
    text = rendered(v1=(server,), stage=Stage.at(1000))
    check_structure(text, 0)
    # v1's one line in lbsplit_v1 and again in lbsplit_pool (it holds v1's servers outside weight mode), and
    # v2's: nothing smuggled in
    servers = [line.strip() for line in text.splitlines() if line.startswith("    server ")]
    v1 = f"server {' '.join([server.address] + server.params())};"
    assert servers == [v1, "server 127.0.0.1:8002;", v1], servers


def test_a_valid_server_line_reaches_the_render_check():
    """The property above returns early on rejected lines: make sure an accepted one runs its assertions."""
    test_generated_server_lines_are_rejected_by_name_or_render_one_server.hypothesis.inner_test("10.0.0.1:8080 weight=3")


@settings(max_examples=60, deadline=None)
@given(st.one_of(HOSTILE_TEXT, st.from_regex(r"\A\$[a-z_]{1,12}\Z")))
def test_generated_keys_are_rejected_by_name_or_are_one_variable(key):
    try:
        check_variable(key, "split.key")
    except ConfigError as e:
        assert str(e).startswith("split.key: ")
        return
    check_structure(rendered(key=key, stage=Stage.at(1000)), 0)


HOSTILE_IDS = ['q"uote', "semi;colon", "{brace}", "$dollar", "#hash", "back\\slash", "default", "include",
               "~.*", "hostnames", "用户", "x" * 200]


def test_hostile_but_valid_ids_reach_v2_through_real_nginx(sandbox):
    sandbox.write_config(whitelist=HOSTILE_IDS)
    result = run_cli(sandbox.config_path, "apply", "0")
    assert result.returncode == 0, result.stderr
    assert sandbox.variants(HOSTILE_IDS) == ["v2"] * len(HOSTILE_IDS)
    # neighbours of those ids, and a regex that `~.*` would have matched, stay on v1
    others = ["quote", "semi", "brace", "dollar", "hash", "backslash", "defaults", "anyone", "x" * 199]
    assert sandbox.variants(others) == ["v1"] * len(others)
    assert sandbox.variants([None]) == ["v1"]


@pytest.mark.parametrize("bad", ["a b", "tab\there", "nul\x00", "esc\x1b[0m"])
def test_ids_nginx_cannot_match_are_refused_and_nothing_changes(sandbox, bad):
    live = (sandbox.output_dir / "lbsplit.conf").read_bytes()
    sandbox.write_config(whitelist=["fine", bad])
    result = run_cli(sandbox.config_path, "apply", "10")
    assert result.returncode == 2 and "split.whitelist[1]" in result.stderr and "Traceback" not in result.stderr
    assert (sandbox.output_dir / "lbsplit.conf").read_bytes() == live
