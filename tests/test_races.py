"""Many applies, reverts and watchdog runs at once: they serialize and the end state is one of them."""

import json
import subprocess
import sys

from conftest import run_cli
from fakes import HealthEndpoint


def test_applies_reverts_and_watchdogs_started_together_serialize(sandbox):
    endpoint = HealthEndpoint()
    endpoint.mode = "status:500"  # the watchdogs want to revert, too
    try:
        sandbox.write_config(extra=f'\n[health]\nurl = "{endpoint.url}"\ntimeout = 1\nfailures_before_revert = 1\n')
        assert run_cli(sandbox.config_path, "apply", "10", "--force").returncode == 0  # from off is a widening too
        argv = [sys.executable, "-m", "lbsplit", "--config", str(sandbox.config_path)]
        commands = [["apply", "20", "--force"], ["apply", "30", "--force"], ["revert"], ["apply", "40", "--force"],
                    ["watchdog", "--once"], ["watchdog", "--once"], ["apply", "50", "--force"], ["revert"],
                    ["watchdog", "--once"], ["apply", "60", "--force"]]
        procs = [subprocess.Popen(argv + c, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for c in commands]
        results = [(c, p.communicate(timeout=180), p.returncode) for c, p in zip(commands, procs)]
    finally:
        endpoint.close()
    for command, (out, err), code in results:
        assert "Traceback" not in err, (command, err)
        if command[0] == "watchdog":
            assert code in (0, 10), (command, err)  # reverted, or found nothing / another watchdog / a busy lock
        elif command[0] == "apply":
            # ran; or ended by a revert that preempted it (130); or refused to widen past a revert (5)
            assert code == 0 or (code == 130 and "interrupted by SIGTERM" in err) or (
                code == 5 and "landed while this command waited" in err), (command, err)
        else:
            assert code == 0, (command, err)
    state = json.loads((sandbox.state_dir / "state.json").read_text())  # whole, parseable: never torn
    status = json.loads(run_cli(sandbox.config_path, "status", "--json").stdout)
    assert status["generation"] == state["generation"] == status["serving_generation"]
    history = [json.loads(l) for l in run_cli(sandbox.config_path, "history", "--json").stdout.splitlines()]
    for a, b in zip(history, history[1:]):
        assert b["from"] == a["to"], "two changes interleaved"
    assert history[-1]["generation"] == status["generation"]
    # the last change to win the lock is what nginx serves
    served = "off" if not status["v2_enabled"] else f"{status['percent']:g}%"
    assert history[-1]["to"] == served
    assert not (sandbox.state_dir / "journal.json").exists()
