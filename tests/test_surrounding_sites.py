"""lbsplit inside a site that uses what lbsplit.conf defines: its own log_format with $lbsplit_key and
$lbsplit_split, a QA location that names upstream lbsplit_v2 directly. Every stage and the revert pass
nginx -t on the site's whole config, and real requests land where each stage says."""

from conftest import run_cli

IDS = [f"user-{i}" for i in range(1000)]


def share(sb) -> float:
    return sb.variants(IDS).count("v2") / len(IDS)


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
        assert abs(share(sandbox) - expected) < 0.04, args
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
    assert share(sandbox) == 0.0
    revert = run_cli(sandbox.config_path, "revert")
    assert revert.returncode == 0, revert.stderr
    import subprocess

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
    assert (sandbox.output_dir / "lbsplit.conf").read_bytes() == live and share(sandbox) == 0.0
