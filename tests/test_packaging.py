"""A non-editable install carries the templates: `lbsplit render` works outside the source tree."""

import subprocess
import sys


def test_non_editable_install_renders(tmp_path):
    repo = __import__("pathlib").Path(__file__).resolve().parent.parent
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(repo)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    assert (target / "lbsplit" / "templates" / "lbsplit.conf.j2").is_file()
    config = tmp_path / "lbsplit.toml"
    config.write_text('state_dir = "state"\n[upstreams]\nv1 = ["a:1"]\nv2 = ["b:1"]\n')
    result = subprocess.run(
        [sys.executable, "-m", "lbsplit", "--config", str(config), "render", "10"],
        capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr
    assert "10% lbsplit_v2;" in result.stdout
