"""The lua split (templates/lbsplit_split.lua) against real split_clients: the same variant for every id.

Debian's libnginx-mod-http-lua is loaded into the test's own nginx; `make test` installs it when
missing. One request per id answers split_clients' variant at four percentages next to the lua
module's, and the lua hash next to lbsplit's Python port (route's arithmetic).
"""

import os
import random
import string
import uuid
from pathlib import Path

import pytest

from lbsplit import resources
from lbsplit.demo.sandbox import NginxProcess, free_port
from harness import pipelined_variants
from lbsplit.nginx.hashing import murmur2

MODULES = Path("/usr/lib/nginx/modules")
PERCENTS = (100, 3333, 5000, 9950)  # hundredths: 1%, 33.33%, 50%, 99.5%


def ids(n: int, seed: int = 13) -> list[str]:
    """URL-safe ids of several shapes (numbers, UUIDs, random text with unreserved characters)."""
    rng = random.Random(seed)
    alphabet = string.ascii_letters + string.digits + "-._~"
    out = []
    for i in range(n):
        kind = i % 3
        if kind == 0:
            out.append(str(rng.randrange(10**12)))
        elif kind == 1:
            out.append(str(uuid.UUID(int=rng.getrandbits(128))))
        else:
            out.append("".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 40))))
    return list(dict.fromkeys(out))


@pytest.fixture(scope="module")
def lua_nginx(tmp_path_factory, nginx_bin):
    if not (MODULES / "ngx_http_lua_module.so").exists():
        pytest.fail("Debian's libnginx-mod-http-lua is not installed; `make test` installs it")
    prefix = tmp_path_factory.mktemp("lua")
    port = free_port()
    splits = "".join(f'    split_clients "$arg_id" $s{p} {{ {p / 100:g}% v2; * v1; }}\n' for p in PERCENTS)
    conf = f"""{'user root;' if os.geteuid() == 0 else ''}
load_module {MODULES}/ndk_http_module.so;
load_module {MODULES}/ngx_http_lua_module.so;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    lua_package_path "{resources.templates_dir()}/?.lua;;";
{splits}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            content_by_lua_block {{
                local split = require "lbsplit_split"
                local id = ngx.var.arg_id or ""
                local out = {{}}
                for _, p in ipairs({{{", ".join(map(str, PERCENTS))}}}) do
                    out[#out + 1] = ngx.var["s" .. p] .. ":" .. (split.in_v2(id, p) and "v2" or "v1")
                end
                local body = table.concat(out, " ") .. " " .. string.format("%d", split.murmur2(id))
                ngx.header["Content-Length"] = #body
                ngx.print(body)
            }}
        }}
    }}
}}
"""
    server = NginxProcess(prefix, conf, nginx_bin)
    server.start(wait_port=port)
    yield port
    server.stop()


def test_the_lua_split_matches_split_clients_on_10000_ids(lua_nginx):
    sample = ids(10_100)[:10_000]
    assert len(sample) == 10_000
    answers = pipelined_variants(lua_nginx, sample, query="id")
    mismatches, on_v2 = [], dict.fromkeys(PERCENTS, 0)
    for user_id, answer in zip(sample, answers):
        *pairs, lua_hash = answer.split()
        assert int(lua_hash) == murmur2(user_id.encode()), user_id  # lua == route's Python port
        for p, pair in zip(PERCENTS, pairs):
            nginx_variant, lua_variant = pair.split(":")
            on_v2[p] += nginx_variant == "v2"
            if nginx_variant != lua_variant:
                mismatches.append((user_id, p, nginx_variant, lua_variant))
    assert mismatches == []
    # and the split is the one asked for (binomial sd over 10,000 ids is at most 0.5 points)
    for p in PERCENTS:
        assert abs(on_v2[p] / len(sample) - p / 10000) < 0.025, (p, on_v2[p])


def test_edge_keys_hash_alike(lua_nginx):
    edge = ["", "a", "ab", "abc", "abcd", "abcde", "~", "0" * 255]
    answers = pipelined_variants(lua_nginx, edge, query="id")
    for user_id, answer in zip(edge, answers):
        *pairs, lua_hash = answer.split()
        assert int(lua_hash) == murmur2(user_id.encode())
        assert all(pair.split(":")[0] == pair.split(":")[1] for pair in pairs), (user_id, pairs)
