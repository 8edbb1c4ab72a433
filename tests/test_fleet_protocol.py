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
