"""The cached skeleton: filling in the generation, percentage and whitelist file gives exactly what a fresh render gives."""

import dataclasses

import pytest

from lbsplit.config import load
from lbsplit.model import Stage
from lbsplit.nginx import dialect
from lbsplit.rollout import planning
from lbsplit.rollout.rendercache import FOLDER


def write_config(tmp_path, mode="hash", runtime="reload", ids=(), whitelist_file=True):
    (tmp_path / "wl.txt").write_text("".join(f"{i}\n" for i in ids))
    (tmp_path / "wl.txt").chmod(0o644)
    (tmp_path / "state").mkdir(exist_ok=True)
    wl = 'whitelist_file = "wl.txt"\n' if whitelist_file else ""
    path = tmp_path / "lbsplit.toml"
    path.write_text(f"""state_dir = "{tmp_path / 'state'}"
[nginx]
binary = "/bin/true"
conf = "{tmp_path / 'nginx.conf'}"
output_dir = "{tmp_path / 'out'}"
runtime = "{runtime}"
status_listen = "127.0.0.1:9181"
[upstreams]
v1 = ["127.0.0.1:8081"]
v2 = ["127.0.0.1:8082", "127.0.0.1:8083"]
[split]
mode = "{mode}"
key = "$http_x_user_id"
whitelist = ["vip-a"]
{wl}""")
    return path


def fresh(prepared, generation):
    """What rendering the plan's own inputs from the templates gives, with no cache and no markers."""
    return dialect.render(dataclasses.replace(prepared.inputs, generation=generation))


SMALL = [f"u{i}" for i in range(20)]  # nginx's default map hash sizes fit: no map_hash lines
LARGE = [f"user-{i:06d}" for i in range(3000)]  # sized map hash lines
LARGER = [f"someone-longer-{i:08d}" for i in range(7000)]


@pytest.mark.parametrize("mode,runtime", [("hash", "reload"), ("weight", "reload"), ("hash", "lua")])
def test_a_filled_skeleton_equals_a_fresh_render(tmp_path, mode, runtime):
    stages = [Stage.off(), Stage.at(0), Stage.at(1050), Stage.at(3000), Stage.at(10000)]
    for ids in ([], SMALL, LARGE, LARGER):
        config = write_config(tmp_path, mode, runtime, ids)
        for stage in stages:
            settings = load(config)
            prepared = planning.plan(settings, stage, remember=True)
            for generation in (1, 42):
                assert prepared.text(generation) == fresh(prepared, generation), (ids[:1], stage, generation)
            # the second time the same inputs come from the cache, and still match
            again = planning.plan(settings, stage, remember=True)
            assert again.text(7) == fresh(again, 7)


def test_a_whitelist_change_reuses_the_skeleton(tmp_path, monkeypatch):
    config = write_config(tmp_path, ids=LARGE)
    first = planning.plan(load(config), Stage.at(3000), remember=True)
    first.text(1)
    cached = sorted((tmp_path / "state" / FOLDER).iterdir())
    assert len(cached) == 1

    def no_render(_inputs):
        raise AssertionError("rendered again instead of filling the cached skeleton")

    write_config(tmp_path, ids=LARGE + ["one-more"])
    monkeypatch.setattr(planning, "render", no_render)
    second = planning.plan(load(config), Stage.at(1000), remember=True)
    text = second.text(2)
    assert second.inputs.include != first.inputs.include  # a new map file
    assert f"include {second.inputs.include};" in text and "3002 ids" in text
    monkeypatch.undo()
    assert text == fresh(second, 2)
    assert sorted((tmp_path / "state" / FOLDER).iterdir()) == cached


def test_no_marker_survives_into_a_text(tmp_path):
    config = write_config(tmp_path, ids=LARGE)
    for stage in (Stage.off(), Stage.at(2500), Stage.at(10000)):
        assert "\0" not in planning.plan(load(config), stage, remember=True).text(3)


def test_a_long_lived_process_checks_each_shape_once_and_every_new_shape(tmp_path, monkeypatch):
    # The fleet agent asks for checked_text at every proposal and commit: texts that differ only
    # in numbers (generation, percentage) are parsed once; another skeleton text, or a cached
    # skeleton someone changed, is parsed again.
    checked = []
    real = planning.check_structure
    monkeypatch.setattr(planning, "check_structure", lambda text, *a, **k: (checked.append(text), real(text, *a, **k)))
    monkeypatch.setattr(planning, "_SHAPES_CHECKED", set())
    settings = load(write_config(tmp_path, ids=SMALL))
    for hundredths, generation in ((1000, 5), (3000, 6), (1050, 7)):
        planning.plan(settings, Stage.at(hundredths), remember=True).checked_text(generation)
    assert len(checked) == 1
    planning.plan(settings, Stage.off(), remember=True).checked_text(8)
    assert len(checked) == 2  # the revert config is another shape
    prepared = planning.plan(settings, Stage.at(2000), remember=True)
    # a cached skeleton someone changed: an extra top-level directive
    prepared.__dict__["_unfilled"] = prepared._unfilled + "\nworker_connections 10;\n"
    with pytest.raises(dialect.StructureError, match="unexpected top-level directives"):
        prepared.checked_text(9)
    assert len(checked) == 3
