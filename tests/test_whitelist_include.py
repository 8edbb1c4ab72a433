"""The whitelist in its own content-addressed map file: written once, reused by percent changes, on real nginx."""

import json
import os
import subprocess
import sys

from conftest import ok, run_cli

IDS = [f"vip-{i:05d}" for i in range(2000)]


def with_whitelist_file(sb, ids, name="wl.txt", config=None):
    (sb.root / name).write_text("\n".join(ids) + "\n")
    sb.write_config(whitelist=[], extra=f'whitelist_file = "{name}"\n')
    return sb.config_path


def maps(sb):
    folder = sb.output_dir / "lbsplit.d"
    return sorted(folder.iterdir()) if folder.is_dir() else []


def nginx_t(sb):
    argv = [sb.binary, "-p", str(sb.front.prefix), "-c", str(sb.front.conf), "-t", "-q"]
    return subprocess.run(argv, capture_output=True, text=True).returncode == 0


def test_a_percent_change_rewrites_only_lbsplit_conf(sandbox):
    with_whitelist_file(sandbox, IDS)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    [map_file] = maps(sandbox)
    before = os.stat(map_file)
    ok(run_cli(sandbox.config_path, "apply", "30"))
    after = os.stat(map_file)
    assert maps(sandbox) == [map_file]
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)  # not rewritten
    conf = (sandbox.output_dir / "lbsplit.conf").read_text()
    assert len(conf) < 4000 and f"include {map_file};" in conf and "vip-00001" not in conf
    assert sandbox.variants(IDS[:50]) == ["v2"] * 50
    cache = json.loads((sandbox.state_dir / "whitelist-cache.json").read_text())
    assert cache["file"]["name"] == map_file.name and cache["file"]["size"] == len(IDS)


def test_a_deleted_map_file_is_written_again(sandbox):
    with_whitelist_file(sandbox, IDS)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    [map_file] = maps(sandbox)
    map_file.unlink()
    ok(run_cli(sandbox.config_path, "apply", "30"))
    assert maps(sandbox) == [map_file] and nginx_t(sandbox)
    assert sandbox.variants(IDS[-20:]) == ["v2"] * 20


def test_a_damaged_cache_is_rebuilt_never_trusted(sandbox):
    with_whitelist_file(sandbox, IDS)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    cache = sandbox.state_dir / "whitelist-cache.json"
    for damage in (b"{", b'{"key": "x"}', json.dumps({"key": json.loads(cache.read_text())["key"],
                                                      "file": {"name": "../../etc/passwd", "size": 1, "map_hash": None},
                                                      "warnings": []}).encode()):
        cache.write_bytes(damage)
        ok(run_cli(sandbox.config_path, "apply", "20" if damage != b"{" else "15"))
        assert "/etc/passwd" not in (sandbox.output_dir / "lbsplit.conf").read_text()
        assert sandbox.variants(IDS[:10]) == ["v2"] * 10


def test_a_changed_whitelist_gets_a_new_file_and_the_old_one_goes_once_unreferenced(sandbox):
    with_whitelist_file(sandbox, IDS)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    [first] = maps(sandbox)
    with_whitelist_file(sandbox, IDS[:100] + ["newcomer"])
    ok(run_cli(sandbox.config_path, "apply", "10"))
    assert sandbox.variants(["newcomer", IDS[500]]) == ["v2", "v1"]
    assert first in maps(sandbox)  # saved generations still refer to it: a repair may restore one
    for percent in ("11", "12", "13", "14", "15"):
        ok(run_cli(sandbox.config_path, "apply", percent))
    assert first not in maps(sandbox) and len(maps(sandbox)) == 1
    assert nginx_t(sandbox)


def test_an_output_dir_nginx_includes_by_glob_does_not_pick_up_the_map_file(sandbox):
    conf = sandbox.front.conf.read_text()
    line = f"include {sandbox.output_dir}/lbsplit.conf;"
    sandbox.front.stop()
    sandbox.front.conf.write_text(conf.replace(line, f"include {sandbox.output_dir}/*.conf;"))  # like conf.d
    sandbox.front.start(wait_port=sandbox.port)
    with_whitelist_file(sandbox, IDS)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    assert nginx_t(sandbox)
    assert sandbox.variants(IDS[:20]) == ["v2"] * 20


def test_a_whitelist_change_and_a_percent_change_racing_end_consistent(sandbox):
    with_whitelist_file(sandbox, IDS)
    ok(run_cli(sandbox.config_path, "apply", "10"))
    other = sandbox.root / "other.toml"
    (sandbox.root / "wl-b.txt").write_text("\n".join(IDS[:10] + ["racer"]) + "\n")
    other.write_text(sandbox.config_path.read_text().replace('whitelist_file = "wl.txt"', 'whitelist_file = "wl-b.txt"'))
    base = [sys.executable, "-m", "lbsplit", "--config"]
    procs = [subprocess.Popen(base + [str(c), "apply", p], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for c, p in ((sandbox.config_path, "30"), (other, "40"), (sandbox.config_path, "50"), (other, "20"))]
    results = [(p.communicate(timeout=120), p.returncode) for p in procs]
    assert [code for _, code in results] == [0, 0, 0, 0], results
    status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
    assert status["serving"] and nginx_t(sandbox)
    conf = (sandbox.output_dir / "lbsplit.conf").read_text()
    included = [l.split()[1].rstrip(";") for l in conf.splitlines() if l.strip().startswith("include ")]
    assert len(included) == 1 and os.path.isfile(included[0])  # the live file's map exists
    on_b = "racer" in open(included[0]).read()
    answer = json.loads(run_cli(sandbox.config_path, "route", "racer", "--json").stdout)
    assert answer["whitelisted"] is on_b  # route reads the live map file
    assert sandbox.variants(["racer"]) == [answer["variant"]]
