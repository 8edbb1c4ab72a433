"""Notifications on every event in each chat tool's format, and hooks around changes, on real nginx."""

import json
import sys

import pytest

from conftest import run_cli
from fakes import HealthEndpoint, WebhookReceiver
from lbsplit.model import Format, Level
from lbsplit.watch.notify import body


@pytest.mark.parametrize("fmt, expected", [
    (Format.SLACK, {"text": "[lbsplit P1] v2 reverted"}),
    (Format.WECOM, {"msgtype": "text", "text": {"content": "[lbsplit P1] v2 reverted"}}),
    (Format.DINGTALK, {"msgtype": "text", "text": {"content": "[lbsplit P1] v2 reverted"}}),
    (Format.FEISHU, {"msg_type": "text", "content": {"text": "[lbsplit P1] v2 reverted"}}),
])
def test_each_chat_format_gets_the_body_its_robot_expects(fmt, expected):
    assert body(fmt, "revert", Level.P1, "v2 reverted", {"stage": "off"}) == expected


def test_the_json_format_carries_the_details():
    sent = body(Format.JSON, "revert", Level.P1, "v2 reverted", {"stage": "off", "generation": 7})
    assert (sent["event"], sent["level"], sent["text"], sent["stage"], sent["generation"]) == \
        ("revert", "P1", "v2 reverted", "off", 7)
    assert sent["host"] and sent["time"]


def test_one_webhook_gets_its_events_in_the_order_they_were_sent():
    # Background sends run in threads: a later event that posts faster must not overtake an earlier one
    # ("release_complete" arrived before "recovery" in a full run).
    import random
    import threading
    import time

    from lbsplit.config.settings import NotifySettings, Webhook
    from lbsplit.watch import notify

    received, guard = [], threading.Lock()

    def post(url, data, timeout):
        time.sleep(random.uniform(0, 0.05))
        with guard:
            received.append((url, data["event"]))
        return None

    hooks = (Webhook(url="http://127.0.0.1:9/a", format=Format.JSON), Webhook(url="http://127.0.0.1:9/b", format=Format.JSON))
    settings = type("S", (), {"notify": NotifySettings(webhooks=hooks, timeout=2)})()
    events = [f"event-{i}" for i in range(12)]
    for event in events:
        notify.send(settings, event, Level.P1, event, post=post, background=True)
    assert notify.drain(10) == []
    for url in ("http://127.0.0.1:9/a", "http://127.0.0.1:9/b"):
        assert [e for u, e in received if u == url] == events


def test_every_event_reaches_the_webhooks_that_want_it(sandbox):
    endpoint = HealthEndpoint()
    hooks = {fmt: WebhookReceiver() for fmt in ("json", "slack", "wecom", "dingtalk", "feishu")}
    try:
        rows = "".join(f'[[notify.webhooks]]\nurl = "{h.url}"\nformat = "{fmt}"\n'
                       + ('min_level = "P1"\n' if fmt == "dingtalk" else "") for fmt, h in hooks.items())
        sandbox.write_config(whitelist=[], extra=f'\n[health]\nurl = "{endpoint.url}"\ntimeout = 1\n'
                                                 f'failures_before_revert = 1\n[notify]\ntimeout = 2\n{rows}')
        assert run_cli(sandbox.config_path, "apply", "10").returncode == 0
        endpoint.mode = "breach:error_rate=0.5"
        assert run_cli(sandbox.config_path, "watchdog", "--once").returncode == 10
        assert [e["event"] for e in hooks["json"].received] == ["apply", "revert"]  # 1 failure reverts at once
        assert [e["level"] for e in hooks["json"].received] == ["P3", "P1"]
        assert all(set(e) == {"text"} for e in hooks["slack"].received) and len(hooks["slack"].received) == 2
        assert hooks["wecom"].received[0]["msgtype"] == "text" and "v2 10%" in hooks["wecom"].received[0]["text"]["content"]
        assert hooks["feishu"].received[-1]["msg_type"] == "text"
        # min_level = "P1": the person's apply (P3) is not sent there, the watchdog's revert is
        assert len(hooks["dingtalk"].received) == 1
        assert all(e["text"]["content"].startswith("[lbsplit P1]") for e in hooks["dingtalk"].received)
    finally:
        endpoint.close()
        for h in hooks.values():
            h.close()


def python_hook(code: str) -> str:
    return json.dumps([sys.executable, "-c", code])


def test_hooks_run_with_the_change_in_their_environment_and_never_block_a_revert(sandbox, tmp_path):
    seen = tmp_path / "env.json"
    webhook = WebhookReceiver()
    try:
        record = f"import os, json; open({str(seen)!r}, 'w').write(json.dumps({{k: v for k, v in os.environ.items() " \
                 f"if k.startswith('LBSPLIT_')}}))"
        sandbox.write_config(whitelist=[], extra=f'\n[hooks]\npost_apply = {python_hook(record)}\n'
                                                 f'post_revert = {python_hook("import sys; print(1); sys.exit(3)")}\n'
                                                 f'[notify]\nwebhook = "{webhook.url}"\n')
        assert run_cli(sandbox.config_path, "apply", "30", "--reason", "stage 2.2").returncode == 0
        env = json.loads(seen.read_text())
        assert (env["LBSPLIT_EVENT"], env["LBSPLIT_STAGE"], env["LBSPLIT_REASON"]) == ("post_apply", "30", "stage 2.2")
        assert env["LBSPLIT_GENERATION"].isdigit()
        reverted = run_cli(sandbox.config_path, "revert")
        assert reverted.returncode == 0  # a failing post_revert never fails or undoes the revert
        assert "WARNING: hook post_revert" in reverted.stdout and "exited 3" in reverted.stdout
        assert sandbox.variants(["u1", "u2", "u3"]) == ["v1"] * 3
        history = [json.loads(l) for l in run_cli(sandbox.config_path, "history", "--json").stdout.splitlines()]
        hook_entries = [(e["command"], e["exit_code"]) for e in history if e["command"].startswith("hook")]
        assert hook_entries == [("hook post_apply", 0), ("hook post_revert", 3)]
        assert [e["event"] for e in webhook.received] == ["apply", "hook_failed", "revert"]
    finally:
        webhook.close()


def test_a_failing_pre_promote_smoke_test_refuses_the_widening(sandbox):
    sandbox.write_config(whitelist=[], extra=f'\n[hooks]\npre_promote = '
                                             f'{python_hook("import sys; print(chr(115)+chr(109)+chr(111)+chr(107)+chr(101)+chr(32)+chr(102)+chr(97)+chr(105)+chr(108)+chr(101)+chr(100)); sys.exit(1)")}\n')
    before = (sandbox.output_dir / "lbsplit.conf").read_bytes()
    refused = run_cli(sandbox.config_path, "apply", "30")
    assert refused.returncode == 8
    assert "[FAIL] pre_promote hook: hook pre_promote" in refused.stderr and "smoke failed" in refused.stderr
    assert (sandbox.output_dir / "lbsplit.conf").read_bytes() == before
    assert run_cli(sandbox.config_path, "revert").returncode == 0  # narrowing never runs it
