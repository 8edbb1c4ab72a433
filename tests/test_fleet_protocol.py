"""What the fleet keeps in etcd round-trips as JSON; a newer lbsplit's extra keys are ignored. Pure."""

import json

from lbsplit.fleet.protocol import COMMITTED, Desired, Report, split_digest, stage_json, stage_of
from lbsplit.model import Stage


def test_desired_and_report_round_trip_and_ignore_unknown_keys():
    d = Desired(id=7, stage=stage_json(Stage.at(3333)), phase=COMMITTED, previous=stage_json(Stage.off()),
                command="apply 33.33", by="ops", at="t", reason="r", force=True)
    assert Desired.loads(d.dumps()) == d and d.target == Stage.at(3333)
    assert stage_of(d.previous) == Stage.off()
    r = Report(host="lb-1", seen=1.5, applied_id=7, served=True, digest="abc", override=None)
    assert Report.loads(r.dumps()) == r
    newer = json.loads(r.dumps()) | {"added_later": 1}
    assert Report.loads(json.dumps(newer)) == r


def test_the_digest_changes_with_everything_that_decides_a_users_variant():
    base = ("hash", "$http_x_user_id", "$remote_addr", "whitelist-abc.map")
    digests = {split_digest(*base)}
    for i, other in enumerate(("weight", "$cookie_uid", "$binary_remote_addr", "whitelist-def.map")):
        changed = list(base)
        changed[i] = other
        digests.add(split_digest(*changed))
    assert len(digests) == 5



def _returns(call, within: float = 10.0) -> float:
    """How long `call` took; fails if it has not returned within `within` seconds (a hang, not a timing)."""
    import threading
    import time as clock

    took = []
    thread = threading.Thread(target=lambda: (lambda t0: (call(), took.append(clock.monotonic() - t0)))(clock.monotonic()))
    thread.start()
    thread.join(within)
    assert not thread.is_alive(), "the wait did not return"
    return took[0]


def test_the_operators_wait_polls_when_the_watch_stream_cannot_be_held(monkeypatch):
    # The Waker's watch failing (etcd refusing streams, a proxy in between) must not hang the
    # operator: the wait falls back to reading every WAIT_POLL seconds.
    import time as clock

    from lbsplit.fleet import commands
    from lbsplit.fleet.store import StoreUnavailable

    class NoStreams:
        def twin(self):
            return self

        def watch(self, key, stop, start_revision=0):
            raise StoreUnavailable("etcd watch of /p/ ended (stream closed)")
            yield  # pragma: no cover

        def close(self):
            pass

    monkeypatch.setattr(commands.Waker, "FALLBACK", 3600.0)  # only the polling fallback can end a wait
    waker = commands.Waker(NoStreams(), "/p", 41)
    deadline = clock.monotonic() + 10
    while waker.streaming and clock.monotonic() < deadline:
        clock.sleep(0.01)
    assert waker.streaming is False
    assert _returns(lambda: waker.wait(3600.0)) >= commands.WAIT_POLL * 0.9
    waker.close()


def test_the_operators_wait_wakes_on_a_change_and_reads_again_after_the_fallback_without_one(monkeypatch):
    import threading

    from lbsplit.fleet import commands

    class OneEvent:
        def __init__(self):
            self.release = threading.Event()

        def twin(self):
            return self

        def watch(self, key, stop, start_revision=0):
            assert key == "/p/" and start_revision == 42  # everything under the prefix since the snapshot
            self.release.wait(30)
            yield 43
            stop.wait(30)

        def close(self):
            pass

    monkeypatch.setattr(commands.Waker, "FALLBACK", 0.3)
    store = OneEvent()
    waker = commands.Waker(store, "/p", 41)
    assert _returns(lambda: waker.wait(3600.0)) >= 0.27  # nothing changed: read again after FALLBACK
    monkeypatch.setattr(commands.Waker, "FALLBACK", 3600.0)  # now only the event can end the wait
    threading.Timer(0.05, store.release.set).start()
    _returns(lambda: waker.wait(3600.0))
    waker.close()


def _counts(v1=(10, 1, 0, 0.5, {"0.005": 10}), v2=(10, 2, 0, 0.5, {"0.005": 10})):
    return {"at": 0, "window": 60, "v1": [*v1[:4], dict(v1[4])], "v2": [*v2[:4], dict(v2[4])]}


def test_published_counts_count_only_from_a_reachable_member_under_its_own_lease():
    from lbsplit.fleet.protocol import Member, counts_problem

    member = Member("lb-1", reachable=True, report=None, lease=77)
    assert counts_problem(_counts(), 77, member) is None
    assert counts_problem(_counts(), 77, None) == "not a member"  # a host nobody registered
    assert "stale" in counts_problem(_counts(), 78, member)  # a lease that is not the member's (a dead agent's)
    assert "stale" in counts_problem(_counts(), 0, member)  # not under any lease at all
    assert "stale" in counts_problem(_counts(), 77, Member("lb-1", reachable=False, report=None))


def test_negative_non_finite_or_inconsistent_counts_are_no_data():
    from lbsplit.fleet.protocol import Member, counts_problem

    member = Member("lb-1", reachable=True, report=None, lease=5)
    bad = [
        _counts(v2=(-500, 0, 0, 0.0, {})),
        _counts(v2=(10, -3, 0, 0.0, {})),
        _counts(v1=(float("nan"), 0, 0, 0.0, {})),
        _counts(v1=(10, 0, 0, float("inf"), {})),
        _counts(v2=(10, 20, 0, 0.0, {})),  # more errors than requests
        _counts(v2=(10, 0, 0, 0.0, {"0.005": 11})),  # more latencies than requests
        _counts(v2=(10, 0, 0, 0.0, {"x": 1})),
        _counts(v2=(True, 0, 0, 0.0, {})),
        {"v1": "lots", "v2": []},
        "not even a dict",
    ]
    for data in bad:
        assert counts_problem(data, 5, member), data


def test_errors_cross_processes_as_data_and_keep_their_exit_code_and_details():
    from lbsplit.errors import ExitCode, GateRefused, LbsplitError, NginxTestFailed, from_data

    refused = GateRefused("refusing to widen", {"items": [{"name": "soak", "ok": False}]})
    back = from_data(json.loads(json.dumps(refused.to_data())))
    assert type(back) is GateRefused and back.exit_code == ExitCode.GATE_REFUSED
    assert back.details == {"items": [{"name": "soak", "ok": False}]} and str(back) == "refusing to widen"
    assert from_data(NginxTestFailed("x").to_data()).exit_code == ExitCode.NGINX_TEST_FAILED
    unknown = from_data({"kind": "from a newer lbsplit", "exit_code": 99, "message": "m"})
    assert type(unknown) is LbsplitError and unknown.exit_code == ExitCode.INTERNAL
    assert from_data("ClassName: text").exit_code == ExitCode.INTERNAL  # a string is never parsed back


def test_a_report_serves_a_change_only_with_its_uid_and_the_stage_nginx_answers():
    d = Desired(id=1, stage=stage_json(Stage.at(3000)), phase=COMMITTED, previous=stage_json(Stage.off()), uid="u1")
    ok = Report(host="lb", seen=0, applied_uid="u1", stage=stage_json(Stage.at(3000)), served=True)
    assert ok.serves_change(d)
    from dataclasses import replace

    assert not replace(ok, applied_uid="u0").serves_change(d)  # an id from an etcd that lost its data
    assert not replace(ok, stage=stage_json(Stage.at(5000))).serves_change(d)  # nginx answers another stage
    assert not replace(ok, served=False).serves_change(d)
