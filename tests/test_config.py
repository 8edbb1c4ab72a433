from pathlib import Path

import pytest

from lbsplit.config import find_config, load
from lbsplit.errors import ConfigError

GOOD = """
state_dir = "state"
[nginx]
conf = "conf/nginx.conf"
output_dir = "out"
[upstreams]
v1 = ["10.0.0.1:8080", "10.0.0.2:8080"]
v2 = ["10.0.1.1:8080"]
[split]
mode = "hash"
key = "$http_x_user_id"
whitelist = ["test_user_001"]
whitelist_file = "whitelist.txt"
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "lbsplit.toml"
    path.write_text(text)
    return path


def test_relative_paths_are_relative_to_the_config_folder(tmp_path):
    s = load(write(tmp_path, GOOD))
    assert s.state_dir == tmp_path / "state"
    assert s.nginx.conf == tmp_path / "conf/nginx.conf"
    assert s.nginx.live_file == tmp_path / "out/lbsplit.conf"
    assert s.split.whitelist_file == tmp_path / "whitelist.txt"
    assert [v.address for v in s.v1] == ["10.0.0.1:8080", "10.0.0.2:8080"]


def test_defaults(tmp_path):
    s = load(write(tmp_path, '[upstreams]\nv1 = ["a:1"]\nv2 = ["b:2"]\n'))
    assert s.nginx.binary == "nginx"
    assert s.nginx.conf == Path("/etc/nginx/nginx.conf")
    assert s.nginx.output_dir == Path("/etc/nginx/lbsplit")
    assert s.state_dir == Path("/var/lib/lbsplit")
    assert (s.split.mode, s.split.key, s.split.fallback_key) == ("hash", "$http_x_user_id", "$remote_addr")


def test_find_config_order(tmp_path, monkeypatch):
    monkeypatch.setenv("LBSPLIT_CONFIG", "/from/env.toml")
    assert find_config("/explicit.toml") == Path("/explicit.toml")
    assert find_config(None) == Path("/from/env.toml")
    monkeypatch.delenv("LBSPLIT_CONFIG")
    assert find_config(None) == Path("lbsplit.toml")


@pytest.mark.parametrize(
    "text, message",
    [
        ("state_dir = [", "not valid TOML"),
        ('statedir = "x"\n[upstreams]\nv1=["a:1"]', "statedir: unknown key; did you mean state_dir?"),
        ('[upstreams]\nv1=["a:1"]\nv2=["b:1"]\n[split]\nwhitelst=[]', "split.whitelst: unknown key; did you mean split.whitelist?"),
        ('[nginx]\nbinary = 5\n[upstreams]\nv1=["a:1"]', "nginx.binary: expected a string"),
        ('[upstreams]\nv1="a:1"', "upstreams.v1: expected a list"),
        ('[upstreams]\nv2=["a:1"]', "upstreams.v1: missing"),
        ('[upstreams]\nv1=[]\nv2=["a:1"]', "upstreams.v1: list at least one server"),
        ('[upstreams]\nv1=["a:1"]\nv2=["b:1"]\n[split]\nmode="random"', "split.mode:"),
        ('[upstreams]\nv1=["a:1"]\nv2=["b:1"]\n[split]\nwhitelist=[1]', "split.whitelist[0]: expected a string id"),
        ('[nginx]\nstatus_listen="0.0.0.0:9181"\n[upstreams]\nv1=["a:1"]', "nginx.status_listen: "),
        # each passed validation and failed later in nginx -t (exit 3) instead of naming the field (exit 2)
        ('[nginx]\nstatus_listen="127.0.0.1.5:9181"\n[upstreams]\nv1=["a:1"]', "nginx.status_listen: "),
        ('[nginx]\nstatus_listen="127.0.0.\u00b9:9181"\n[upstreams]\nv1=["a:1"]', "nginx.status_listen: "),
        ('[nginx]\nstatus_listen="127.999.0.1:9181"\n[upstreams]\nv1=["a:1"]', "nginx.status_listen: "),
        ('[nginx]\nstatus_listen="[fe80::1%eth0]:8080"\n[upstreams]\nv1=["a:1"]', "nginx.status_listen: "),
        ('[nginx]\nreload_command="nginx -s reload"\n[upstreams]\nv1=["a:1"]', "nginx.reload_command: expected a list"),
        ('lock_timeout = true\n[upstreams]\nv1=["a:1"]', "lock_timeout: expected a number"),
        ('[upstreams]\nv1=["a:1 backup"]', "every server is backup or down"),
        ('[upstreams]\nv1=["a:1"]\nv2=["b:1"]\n[split]\nforce_header="X_Variant"', "split.force_header: 'X_Variant'"),
        ('[upstreams]\nv1=["a:1"]\nv2=["b:1"]\n[split]\nforce_header="X-Variant;"', "split.force_header:"),
        ('[upstreams]\nv1=["a:1"]\nv2=["b:1"]\n[split]\nforce_header="X-\u00c9"', "split.force_header:"),
        ('[upstreams]\nv1=["a:1"]\nv2=["b:1"]\n[split]\nforce_cookie="qa-variant"', "split.force_cookie: 'qa-variant'"),
        ('[upstreams]\nv1=["a:1"]\nv2=["b:1"]\n[split]\nforce_cookie=1', "split.force_cookie: expected a string"),
    ],
)
def test_bad_config_names_the_field(tmp_path, text, message):
    with pytest.raises(ConfigError) as e:
        load(write(tmp_path, text))
    assert message in str(e.value)


def test_missing_config_says_how_to_point_at_one(tmp_path):
    with pytest.raises(ConfigError, match="--config PATH"):
        load(tmp_path / "nope.toml")


def test_revert_tolerates_a_broken_split_section(tmp_path):
    path = write(tmp_path, '[upstreams]\nv1=["a:1"]\nv2=["not an address"]\n')
    with pytest.raises(ConfigError, match="upstreams.v2"):
        load(path)
    s = load(path, for_revert=True)
    assert s.v2 is None
    with pytest.raises(ConfigError, match="upstreams.v2"):
        s.require_rollout()
