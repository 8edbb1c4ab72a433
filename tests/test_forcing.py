"""The QA override (split.force_header / split.force_cookie) through a real nginx, in both runtimes.

A request whose override header or cookie says v1 or v2 goes there while v2 is on, whatever the
whitelist and the split say; the header wins over the cookie; after a revert everyone is on v1,
the override included; `lbsplit route` says the same as nginx for every request."""

import http.client
import json

import pytest

from conftest import REPO, run_cli
from lbsplit.demo.sandbox import Sandbox
from lbsplit.nginx.process import lua_modules

HEADER, COOKIE = "X-Lbsplit-Variant", "lbsplit_variant"
WHITELIST = ["test_user_001", "internal_staff_001"]
IDS = [f"user-{i}" for i in range(150)] + WHITELIST


def ask(sb: Sandbox, user_id: str, header: str | None = None, cookie: str | None = None) -> str:
    """The variant nginx sends this request to (the backends answer with their name)."""
    headers = {"X-User-Id": user_id}
    if header is not None:
        headers[HEADER] = header
    if cookie is not None:
        headers["Cookie"] = f"other=1; {COOKIE}={cookie}"
    conn = http.client.HTTPConnection("127.0.0.1", sb.port, timeout=10)
    try:
        conn.request("GET", "/", headers=headers)
        return conn.getresponse().read().decode().strip()
    finally:
        conn.close()


def routed(sb: Sandbox, user_id: str, *flags: str) -> dict:
    done = run_cli(sb.config_path, "route", user_id, *flags, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(params=["reload-hash", "reload-weight", "lua"])
def forced_sb(request, tmp_path, nginx_bin):
    runtime, _, mode = request.param.partition("-")
    if runtime == "lua" and not lua_modules():
        pytest.fail("Debian's libnginx-mod-http-lua is not installed; `make test` installs it")
    sb = Sandbox(tmp_path / "sb", binary=nginx_bin, nginx_dir=REPO / "nginx", lua=runtime == "lua")
    sb.runtime = runtime
    sb.mode = mode or "hash"
    sb.write_config(mode=mode or "hash", whitelist=WHITELIST,
                    extra=f'force_header = "{HEADER}"\nforce_cookie = "{COOKIE}"\n')
    assert run_cli(sb.config_path, "init").returncode == 0
    sb.start()
    yield sb
    sb.stop()


def test_the_override_wins_while_v2_is_on_and_a_revert_ends_it(forced_sb):
    sb = forced_sb
    done = run_cli(sb.config_path, "apply", "30")
    assert done.returncode == 0, done.stderr
    plain = [ask(sb, i) for i in IDS]
    assert 0 < plain.count("v2") < len(IDS)  # the split sends some users each way
    assert all(v == "v2" for v in plain[-2:])  # the whitelist, without an override
    # The header, any case, wins over the split and the whitelist.
    assert {ask(sb, i, header="v2") for i in IDS} == {"v2"}
    assert {ask(sb, i, header="V1") for i in IDS} == {"v1"}
    # The cookie, the same; the header wins when both are sent.
    assert {ask(sb, i, cookie="v2") for i in IDS} == {"v2"}
    assert {ask(sb, i, header="v1", cookie="v2") for i in IDS} == {"v1"}
    # Any other value is no override: the split decides, as without it (hash mode is sticky per user).
    if sb.mode == "hash":
        assert [ask(sb, i, header="v3", cookie="") for i in IDS] == plain
    # route says the same as nginx for each kind of request.
    assert routed(sb, "user-1", "--force-header", "v2")["variant"] == "v2"
    answer = routed(sb, "test_user_001", "--force-header", "v1", "--force-cookie", "v2")
    assert answer["variant"] == "v1" and HEADER in answer["reason"], answer
    assert routed(sb, "user-1", "--force-cookie", "V2")["variant"] == "v2"

    done = run_cli(sb.config_path, "revert", "--reason", "qa override test")
    assert done.returncode == 0, done.stderr
    assert {ask(sb, i, header="v2") for i in IDS} == {"v1"}
    assert {ask(sb, i, cookie="v2") for i in IDS} == {"v1"}
    answer = routed(sb, "user-1", "--force-header", "v2")
    assert answer["variant"] == "v1" and "QA override off" in answer["reason"], answer

    done = run_cli(sb.config_path, "apply", "100", "--force")
    assert done.returncode == 0, done.stderr
    assert {ask(sb, i) for i in IDS[:20]} == {"v2"}
    assert {ask(sb, i, header="v1") for i in IDS[:20]} == {"v1"}  # QA still reaches v1 at 100%


def test_a_config_without_the_override_ignores_the_header(sandbox):
    done = run_cli(sandbox.config_path, "apply", "0")
    assert done.returncode == 0, done.stderr
    assert {ask(sandbox, i, header="v2", cookie="v2") for i in IDS[:50]} == {"v1"}
    assert routed(sandbox, "user-1", "--force-header", "v2")["variant"] == "v1"
