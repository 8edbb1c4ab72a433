"""A non-editable install carries everything it needs: templates, snippets, the demo; nothing points into the repo."""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def test_non_editable_install_renders_helps_and_builds_the_demo_sandbox(tmp_path):
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(REPO)],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
    )
    assert build.returncode == 0, build.stderr
    assert (target / "lbsplit" / "templates" / "lbsplit.conf.j2").is_file()
    assert (target / "lbsplit" / "snippets" / "lbsplit-proxy.conf").is_file()
    assert (target / "lbsplit" / "templates" / "check-nginx.conf").is_file()
    # every package of the source tree is in the wheel (the package list in pyproject.toml is by hand)
    missing = [str(init.parent.relative_to(REPO)) for init in (REPO / "lbsplit").rglob("__init__.py")
               if not (target / init.relative_to(REPO)).is_file()]
    assert missing == []
    env = {"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"}

    def run(*argv):
        return subprocess.run([sys.executable, *argv], capture_output=True, text=True, cwd=tmp_path, env=env)

    config = tmp_path / "lbsplit.toml"
    config.write_text('state_dir = "state"\n[upstreams]\nv1 = ["a:1"]\nv2 = ["b:1"]\n')
    result = run("-m", "lbsplit", "--config", str(config), "render", "10")
    assert result.returncode == 0, result.stderr
    assert "10% lbsplit_v2;" in result.stdout
    helped = run("-m", "lbsplit", "--help")
    assert helped.returncode == 0 and "apply" in helped.stdout
    where = run("-c", "import lbsplit.app.commands as c, lbsplit.config as k; print(c.__file__); print(k.__file__)")
    assert all(Path(f).resolve().is_relative_to(target.resolve()) for f in where.stdout.split()), where
    # the demo's sandbox finds its nginx configs inside the installed package, not in a source tree
    probe = ("import lbsplit.demo.sandbox as s, pathlib; sb = s.Sandbox(pathlib.Path('box'), binary='nginx'); "
             "print(sb.nginx_dir); print(sb.front.conf.read_text())")
    built = run("-c", probe)
    assert built.returncode == 0, built.stderr
    where, _, conf = built.stdout.partition("\n")
    assert Path(where).resolve() == (target / "lbsplit" / "snippets").resolve()
    assert f"include {target.resolve() / 'lbsplit' / 'snippets'}/lbsplit-proxy.conf;" in conf or \
        f"include {target / 'lbsplit' / 'snippets'}/lbsplit-proxy.conf;" in conf
