"""The [fleet] section: every bad value is one line naming the field; revert --local needs none of it."""

import pytest

from conftest import run_cli
from lbsplit.config import load

BASE = '''state_dir = "{state}"
[nginx]
output_dir = "{out}"
[upstreams]
v1 = ["127.0.0.1:8001"]
v2 = ["127.0.0.1:8002"]
[fleet]
'''


def write(tmp_path, fleet: str):
    path = tmp_path / "lbsplit.toml"
    path.write_text(BASE.format(state=tmp_path / "state", out=tmp_path / "out") + fleet)
    return path


def test_a_complete_fleet_section_loads_with_defaults(tmp_path):
    settings = load(write(tmp_path, 'etcd = ["http://127.0.0.1:2379"]\nprefix = "/lbsplit/checkout"\n'))
    fleet = settings.require_fleet()
    assert fleet.prefix == "/lbsplit/checkout" and fleet.agent_ttl == 10 and fleet.apply_timeout == 60
    assert fleet.host  # the machine's hostname by default


@pytest.mark.parametrize("fleet, field", [
    ('prefix = "/x"\n', "fleet:"),
    ('etcd = []\nprefix = "/x"\n', "fleet.etcd"),
    ('etcd = ["127.0.0.1:2379"]\nprefix = "/x"\n', "fleet.etcd"),
    ('etcd = ["http://e:2379"]\nprefix = "x/"\n', "fleet.prefix"),
    ('etcd = ["http://e:2379"]\nprefix = "/x"\nhost = "a b"\n', "fleet.host"),
    ('etcd = ["http://e:2379"]\nprefix = "/x"\nagent_ttl = 1\n', "fleet.agent_ttl"),
    ('etcd = ["http://e:2379"]\nprefix = "/x"\nagent_ttl = true\n', "fleet.agent_ttl"),
    ('etcd = ["http://e:2379"]\nprefix = "/x"\napply_timeout = 0\n', "fleet.apply_timeout"),
    ('etcd = ["http://e:2379"]\nprefix = "/x"\npassword_env = "P"\n', "fleet.user"),
    ('etcd = ["http://e:2379"]\nprefix = "/x"\nuser = "u"\npassword_env = "P"\npassword_file = "f"\n',
     "fleet.password_file"),
    ('etcd = ["http://e:2379"]\nprefix = "/x"\ncert_file = "c.pem"\n', "fleet.cert_file"),
    ('etcd = ["http://e:2379"]\nprefix = "/x"\nttl = 3\n', "fleet.ttl"),
])
def test_bad_fleet_values_are_one_line_naming_the_field(tmp_path, fleet, field):
    result = run_cli(write(tmp_path, fleet), "status")
    assert result.returncode == 2, result.stdout + result.stderr
    assert result.stderr.startswith(f"lbsplit: {field}") and result.stderr.count("\n") == 1, result.stderr


def test_a_broken_fleet_section_refuses_a_fleet_revert_and_points_at_revert_local(tmp_path):
    config = write(tmp_path, 'etcd = ["nope"]\nprefix = "/x"\n')
    result = run_cli(config, "revert")
    assert result.returncode == 2 and "revert --local" in result.stderr


def test_the_etcd_password_is_never_printed(tmp_path, monkeypatch):
    config = write(tmp_path, 'etcd = ["http://127.0.0.1:9"]\nprefix = "/x"\nuser = "u"\npassword_env = "LBSPLIT_T_PW"\n')
    result = run_cli(config, "status", env={"LBSPLIT_T_PW": "hunter2-secret"})
    assert result.returncode == 6, result.stderr
    assert "hunter2-secret" not in result.stdout + result.stderr
