"""Real traffic through a real nginx on loopback: the split, stickiness, monotonicity, whitelist, revert."""

import json


from conftest import run_cli
from harness import pipelined_variants

IDS = [f"user-{i}" for i in range(3000)]
WHITELIST = ["test_user_001", "test_user_002", "internal_staff_001"]


def apply(sb, *args):
    result = run_cli(sb.config_path, *args)
    assert result.returncode == 0, result.stderr
    return result


def v2_set(sb, ids=IDS):
    return {i for i, v in zip(ids, pipelined_variants(sb.port, ids)) if v == "v2"}


def test_observed_split_per_stage_is_sticky_and_monotonic(sandbox):
    previous = set()
    for percent in (10, 30, 100):
        apply(sandbox, "apply", str(percent))
        on_v2 = v2_set(sandbox)
        share = len(on_v2) / len(IDS)
        # 3,000 ids: the binomial standard deviation is <= 0.9 points; allow 4 of them.
        assert abs(share - percent / 100) < 0.037, (percent, share)
        assert previous <= on_v2, f"{len(previous - on_v2)} users left v2 when going to {percent}%"
        assert v2_set(sandbox) == on_v2, "a second request of the same users changed variant"
        assert sandbox.variants(WHITELIST) == ["v2"] * 3
        previous = on_v2
    assert previous == set(IDS)


def test_zero_percent_means_only_the_whitelist(sandbox):
    apply(sandbox, "apply", "0")
    assert v2_set(sandbox, IDS[:500]) == set()
    assert sandbox.variants(WHITELIST) == ["v2"] * 3
    # nginx's map is case-insensitive: an id that only differs by case matches too (documented)
    assert sandbox.variants(["TEST_USER_001"]) == ["v2"]


def test_revert_puts_everyone_including_the_whitelist_on_v1(sandbox):
    apply(sandbox, "apply", "100")
    assert sandbox.variants(WHITELIST + IDS[:50]) == ["v2"] * 53
    result = apply(sandbox, "revert", "--reason", "drill")
    assert "serves generation" in result.stdout
    assert sandbox.variants(WHITELIST + IDS[:500]) == ["v1"] * 503
    status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
    assert status["v2_enabled"] is False and status["serving"] is True and status["percent"] == 0


def test_requests_without_an_id_split_on_the_fallback_key(sandbox):
    apply(sandbox, "apply", "100")
    assert sandbox.variants([None, ""]) == ["v2", "v2"]
    apply(sandbox, "apply", "0")
    assert sandbox.variants([None, ""]) == ["v1", "v1"]  # not whitelisted, 0% -> v1
    apply(sandbox, "apply", "50")
    # every request here comes from 127.0.0.1, so they all share one variant
    assert len(set(sandbox.variants([None] * 20))) == 1


def test_a_request_right_after_apply_sees_the_new_split(sandbox):
    for round_ in range(6):
        percent, expected = ("100", "v2") if round_ % 2 == 0 else ("0", "v1")
        apply(sandbox, "apply", percent)
        # a fresh connection, sent the moment apply has returned
        assert sandbox.variants(["someone"]) == [expected], f"round {round_}"


def test_weight_mode_shares_requests_by_weight(sandbox):
    sandbox.write_config(mode="weight", whitelist=WHITELIST)
    apply(sandbox, "apply", "30")
    variants = sandbox.variants([f"anyone-{i}" for i in range(1000)])
    assert abs(variants.count("v2") / 1000 - 0.30) < 0.05
    assert sandbox.variants(WHITELIST) == ["v2"] * 3
    apply(sandbox, "revert")
    assert set(sandbox.variants(IDS[:200])) == {"v1"}


def test_status_and_history_tell_what_happened(sandbox):
    apply(sandbox, "apply", "10", "--reason", "stage 1")
    apply(sandbox, "apply", "30")
    apply(sandbox, "revert", "--reason", "error rate")
    status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
    assert status["generation"] == 4 and status["serving_generation"] == 4 and status["serving"]
    lines = [json.loads(l) for l in run_cli(sandbox.config_path, "history", "--json").stdout.splitlines()]
    assert [(e["command"], e["from"], e["to"], e["reason"]) for e in lines] == [
        ("init", "none", "off", "first install"),
        ("apply 10", "off", "10%", "stage 1"),
        ("apply 30", "10%", "30%", ""),
        ("revert", "30%", "off", "error rate"),
    ]
    human = run_cli(sandbox.config_path, "status").stdout
    assert "serving:     yes, nginx answers generation 4" in human


def test_applying_the_live_stage_again_changes_nothing(sandbox):
    apply(sandbox, "apply", "30")
    before = (sandbox.output_dir / "lbsplit.conf").read_bytes()
    result = apply(sandbox, "apply", "30")
    assert "nothing changed" in result.stdout
    assert (sandbox.output_dir / "lbsplit.conf").read_bytes() == before


def test_dry_run_shows_a_diff_and_changes_nothing(sandbox):
    apply(sandbox, "apply", "10")
    live = sandbox.output_dir / "lbsplit.conf"
    before = live.read_bytes()
    result = apply(sandbox, "apply", "30", "--dry-run")
    assert "-    10% lbsplit_v2;" in result.stdout and "+    30% lbsplit_v2;" in result.stdout
    assert live.read_bytes() == before
    assert json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)["percent"] == 10


def test_render_prints_without_touching_anything(sandbox):
    live = sandbox.output_dir / "lbsplit.conf"
    before = live.read_bytes()
    result = apply(sandbox, "render", "30")
    assert "30% lbsplit_v2;" in result.stdout
    assert live.read_bytes() == before
