"""The command line as a user meets it: help everywhere, one-line errors, exit codes."""

import pytest
from click.testing import CliRunner

from lbsplit.cli import main
from conftest import run_cli


def all_commands():
    return sorted(main.commands)


@pytest.mark.parametrize("name", all_commands())
def test_every_command_has_help_with_an_example(name):
    result = CliRunner().invoke(main, [name, "--help"])
    assert result.exit_code == 0
    assert "Example" in result.output or "example" in result.output
    assert main.commands[name].help


def test_missing_config_is_one_line_exit_2(tmp_path):
    result = run_cli(tmp_path / "none.toml", "status")
    assert result.returncode == 2
    assert result.stderr.strip().count("\n") == 0
    assert "not found; pass --config PATH" in result.stderr


def test_config_from_environment(tmp_path):
    result = run_cli(None, "status", env={"LBSPLIT_CONFIG": str(tmp_path / "env.toml")})
    assert "env.toml not found" in result.stderr


def test_unknown_key_suggests_the_close_name(tmp_path):
    path = tmp_path / "lbsplit.toml"
    path.write_text('[upstreams]\nv1 = ["a:1"]\nv2 = ["b:1"]\n[split]\nkye = "$x"\n')
    result = run_cli(path, "render", "10")
    assert result.returncode == 2
    assert result.stderr.strip() == "lbsplit: split.kye: unknown key; did you mean split.key?"


def test_render_needs_no_nginx_and_prints_the_config(tmp_path):
    path = tmp_path / "lbsplit.toml"
    path.write_text(f'state_dir = "{tmp_path}/state"\n[upstreams]\nv1 = ["a:1"]\nv2 = ["b:1"]\n[split]\nwhitelist = ["x"]\n')
    result = run_cli(path, "render", "30")
    assert result.returncode == 0, result.stderr
    assert "30% lbsplit_v2;" in result.stdout and "/lbsplit.d/whitelist-" in result.stdout
    ids = run_cli(path, "render", "30", "--whitelist-file")
    assert ids.returncode == 0 and ids.stdout == '    "\\\\x" lbsplit_v2;\n'
    off = run_cli(path, "render", "off", "--whitelist-file")  # nothing to print is an error, not an empty exit 0
    assert off.returncode == 2 and off.stdout == "" and "no whitelist map file at off" in off.stderr, off.stderr
    assert not (tmp_path / "state").exists()
