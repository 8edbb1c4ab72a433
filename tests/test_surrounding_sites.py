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
        "    server {\n", f"    log_format site '$remote_addr $lbsplit_key $lbsplit_split $lbsplit_upstream';\n"
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
