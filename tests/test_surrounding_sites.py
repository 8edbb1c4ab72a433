"""lbsplit inside a site that uses what lbsplit.conf defines: its own log_format with $lbsplit_key and
$lbsplit_split, a QA location that names upstream lbsplit_v2 directly. Every stage and the revert pass
nginx -t on the site's whole config, and real requests land where each stage says."""

import os
import subprocess

from conftest import run_cli, share

IDS = [f"user-{i}" for i in range(1000)]


def test_a_site_logging_lbsplit_variables_and_naming_its_upstreams_survives_every_stage_and_revert(sandbox):
    conf = sandbox.front.conf
    text = conf.read_text()
    site_listen = f"listen 127.0.0.1:{sandbox.port};"
    site_log = sandbox.front.prefix / "site.log"
    conf.write_text(text.replace(
        "    server {\n", "    log_format site '$remote_addr $lbsplit_key $lbsplit_split $lbsplit_upstream';\n"
                         "    server {\n", 1).replace(
        site_listen, f"{site_listen}\n"
                     "        location = /qa { proxy_pass http://lbsplit_v2; }\n"
                     "        location = /pool { proxy_pass http://lbsplit_pool; }", 1).replace(
        "lbsplit-access.log lbsplit;", f"lbsplit-access.log lbsplit;\n            access_log {site_log} site;", 1))
    sandbox.front.stop()
    sandbox.front.start(wait_port=sandbox.port)
    for args, expected in ((("apply", "10"), 0.10), (("apply", "100", "--force"), 1.0), (("revert",), 0.0),
                           (("apply", "30", "--force"), 0.30), (("revert",), 0.0)):
        result = run_cli(sandbox.config_path, *args)
        assert result.returncode == 0, (args, result.stdout + result.stderr)
        assert abs(share(sandbox, IDS) - expected) < 0.04, args
    assert run_cli(sandbox.config_path, "status").returncode == 0
    logged = site_log.read_text().splitlines()
    assert logged and all(len(line.split()) == 4 for line in logged)
    assert any(" user-7 " in f" {line} " for line in logged)  # $lbsplit_key is the id, at every stage


def test_an_output_dir_read_by_a_wildcard_include_is_refused_before_anything_is_written(sandbox):
    """Debian's `include /etc/nginx/conf.d/*;`: lbsplit's own folder there would be loaded as a config file."""
    conf = sandbox.front.conf
    text = conf.read_text()
    explicit = f"include {sandbox.output_dir}/lbsplit.conf;"
    assert explicit in text
    conf.write_text(text.replace(explicit, f"include {sandbox.output_dir}/*;"))  # picks lbsplit.conf up too
    sandbox.front.stop()
    sandbox.front.start(wait_port=sandbox.port)
    before = sorted(p.name for p in sandbox.output_dir.iterdir())
    live = (sandbox.output_dir / "lbsplit.conf").read_bytes()
    result = run_cli(sandbox.config_path, "apply", "10")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "nginx.output_dir" in result.stderr and f"include {sandbox.output_dir}/*" in result.stderr
    assert result.stderr.count("\n") == 1  # one line
    assert sorted(p.name for p in sandbox.output_dir.iterdir()) == before  # no lbsplit.d/ left behind
    assert (sandbox.output_dir / "lbsplit.conf").read_bytes() == live
    assert share(sandbox, IDS) == 0.0
    revert = run_cli(sandbox.config_path, "revert")
    assert revert.returncode == 0, revert.stderr

    assert subprocess.run([sandbox.binary, "-t", "-q", "-p", str(sandbox.front.prefix), "-c", str(conf)],
                          capture_output=True).returncode == 0  # every later reload still works


def test_a_sites_own_map_hash_bucket_size_is_named_with_the_line_to_remove(sandbox):
    (sandbox.root / "wl.txt").write_text("".join(f"staff-{i}\n" for i in range(600)))  # big enough to be sized
    sandbox.write_config(whitelist=[], extra='whitelist_file = "wl.txt"\n')
    conf = sandbox.front.conf
    conf.write_text(conf.read_text().replace("http {", "http {\n    map_hash_bucket_size 128;", 1))
    sandbox.front.stop()
    sandbox.front.start(wait_port=sandbox.port)
    live = (sandbox.output_dir / "lbsplit.conf").read_bytes()
    result = run_cli(sandbox.config_path, "apply", "10")
    assert result.returncode == 3, result.stdout + result.stderr
    assert "your nginx config sets map_hash_bucket_size" in result.stderr and "remove your" in result.stderr
    assert (sandbox.output_dir / "lbsplit.conf").read_bytes() == live and share(sandbox, IDS) == 0.0


def test_a_site_map_that_relies_on_lbsplits_sizing_still_builds_after_a_revert(sandbox):
    """The site took the advice above: its own map, with a key too long for nginx's default 64-byte bucket, now
    relies on lbsplit's map_hash_bucket_size. A revert keeps that sizing (without it the revert would fail
    nginx -t and leave v2 on); the gate checks the revert config inside the whole site config, where the two
    differ: the revert text without the sizing passes nginx -t alone and fails in the site."""
    from lbsplit.config import load
    from lbsplit.nginx.process import Nginx
    from lbsplit.rollout.planning import plan
    from lbsplit.model import Stage

    (sandbox.root / "wl.txt").write_text("".join(f"staff-{i}\n" for i in range(600)))  # big enough to be sized
    sandbox.write_config(whitelist=[], extra='whitelist_file = "wl.txt"\n')
    conf = sandbox.front.conf
    long_key = "/" + "x" * 120
    include = f"include {sandbox.output_dir}/lbsplit.conf;"
    conf.write_text(conf.read_text().replace(  # after the include: nginx sizes a map when it reads the block
        include, f'{include}\n    map $uri $site_long {{\n        "{long_key}" 1;\n        default 0;\n    }}', 1))
    ok = run_cli(sandbox.config_path, "apply", "10")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    sandbox.front.stop()
    sandbox.front.start(wait_port=sandbox.port)  # the site's map builds only with lbsplit's sizing in place
    assert abs(share(sandbox, IDS) - 0.10) < 0.04

    nginx = Nginx(load(sandbox.config_path).nginx)
    bare = plan(load(sandbox.config_path), Stage.off()).text(0)
    assert "map_hash_bucket_size" not in bare
    assert nginx.test_snippet(bare) is None, "alone, the bare revert text passes"
    in_site = nginx.test_in_site(bare, nginx.site_copy().text)
    assert in_site is not None and "map_hash_bucket_size" in in_site, in_site
    assert not list(conf.parent.glob(".lbsplit-tmp-*")), "the check copy is removed"

    check = run_cli(sandbox.config_path, "check", "30")
    assert "[ok  ] revert config: passes nginx -t inside your nginx config" in check.stdout, check.stdout
    reverted = run_cli(sandbox.config_path, "revert")
    assert reverted.returncode == 0, reverted.stdout + reverted.stderr
    assert share(sandbox, IDS) == 0.0
    live = (sandbox.output_dir / "lbsplit.conf").read_text()
    assert "map_hash_bucket_size 512;" in live and "Kept from the file before this revert" in live
    assert run_cli(sandbox.config_path, "status").returncode == 0
    assert subprocess.run([sandbox.binary, "-t", "-q", "-p", str(sandbox.front.prefix), "-c", str(conf)],
                          capture_output=True).returncode == 0
    again = run_cli(sandbox.config_path, "apply", "30", "--force")
    assert again.returncode == 0, again.stderr
    assert abs(share(sandbox, IDS) - 0.30) < 0.04


def test_debians_stock_layout_with_conf_d_and_sites_enabled_globs(sandbox):
    """nginx.conf as Debian ships it: mime.types, `include conf.d/*.conf;` and `include sites-enabled/*;`
    (relative to nginx.conf), the site in sites-enabled/default, lbsplit.conf included by name from its own
    folder. Every stage and the revert land where they say, and the gate's revert check follows the globs."""
    import re

    conf = sandbox.front.conf
    text = conf.read_text()
    server = re.search(r"\n    server \{\n.*?\n    \}\n", text, re.S).group(0)
    (conf.parent / "sites-enabled").mkdir()
    (conf.parent / "sites-enabled" / "default").write_text(server)
    (conf.parent / "conf.d").mkdir()
    (conf.parent / "conf.d" / "gzip.conf").write_text("gzip on;\ngzip_types text/plain application/json;\n")
    (conf.parent / "conf.d" / ".hidden.conf").write_text("this is not nginx syntax and a glob never reads it\n")
    mime = "    include /etc/nginx/mime.types;\n" if os.path.isfile("/etc/nginx/mime.types") else ""
    conf.write_text(text.replace(server, f"\n{mime}    include conf.d/*.conf;\n    include sites-enabled/*;\n"))
    sandbox.front.stop()
    sandbox.front.start(wait_port=sandbox.port)
    for args, expected in ((("apply", "10"), 0.10), (("apply", "30"), 0.30), (("revert",), 0.0),
                           (("apply", "10"), 0.10)):
        result = run_cli(sandbox.config_path, *args)
        assert result.returncode == 0, (args, result.stdout + result.stderr)
        assert abs(share(sandbox, IDS) - expected) < 0.04, args
    check = run_cli(sandbox.config_path, "check", "30")
    assert "[ok  ] revert config: passes nginx -t inside your nginx config" in check.stdout, check.stdout
    assert not list(conf.parent.glob(".lbsplit-tmp-*"))
    assert subprocess.run([sandbox.binary, "-t", "-q", "-p", str(sandbox.front.prefix), "-c", str(conf)],
                          capture_output=True).returncode == 0


def test_the_remembered_site_copy_follows_every_edit_of_the_sites_files(sandbox):
    """The gate keeps the site's flattened config between widenings; an edited file makes it flatten again."""
    kept = sandbox.state_dir / "site-copy.json"
    assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
    first = kept.read_text()
    assert "lbsplit-revert-config-placeholder" in first  # the copy the revert config was checked inside
    assert run_cli(sandbox.config_path, "apply", "20", "--force").returncode == 0
    assert kept.read_text() == first  # nothing changed: the same copy
    conf = sandbox.front.conf
    conf.write_text(conf.read_text().replace("http {", "http {\n    server_tokens off;", 1))
    assert run_cli(sandbox.config_path, "apply", "30", "--force").returncode == 0
    assert "server_tokens off;" in kept.read_text() and "server_tokens off;" not in first
    assert abs(share(sandbox, IDS) - 0.30) < 0.04
