"""A signal that lands anywhere before the commit point stays an interruption (pure: a real SIGTERM to this process)."""

import os
import signal

import crossplane.parser
import pytest

from lbsplit.rollout import files
from lbsplit.errors import Interrupted, LbsplitError, StructureError
from lbsplit.nginx.dialect import _parse
from lbsplit.rollout.transaction import Signals


@pytest.fixture
def sigterm_mid_parse(monkeypatch):
    """SIGTERM to this process from inside crossplane's analysis of the first directive."""
    real = crossplane.parser.analyze

    def analyze(*args, **kwargs):
        monkeypatch.setattr(crossplane.parser, "analyze", real)  # once
        os.kill(os.getpid(), signal.SIGTERM)
        return real(*args, **kwargs)

    monkeypatch.setattr(crossplane.parser, "analyze", analyze)


def test_a_signal_during_crossplanes_parse_is_not_reported_as_a_parse_error(sigterm_mid_parse):
    # crossplane records every Exception raised while it parses as an error of the file
    with Signals(), pytest.raises(Interrupted, match="interrupted by SIGTERM; nothing was changed"):
        _parse("map $a $b { default 1; }\n")


def test_code_that_tolerates_an_expected_failure_does_not_swallow_a_signal(tmp_path):
    swallowed = []
    with Signals(), pytest.raises(Interrupted):
        try:  # the shape of every "a lost shortcut" read in the gate and the watchdog
            os.kill(os.getpid(), signal.SIGTERM)
            files.read_bytes(tmp_path / "absent")
        except LbsplitError as e:
            swallowed.append(e)
        except Exception as e:  # noqa: BLE001 - what a library does
            swallowed.append(e)
    assert swallowed == []


def test_crossplanes_own_errors_are_still_parse_errors():
    with pytest.raises(StructureError, match="does not parse"):
        _parse("map $a $b { default 1;\n")


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the drop is the point
def test_a_signal_python_drops_in_a_finalizer_is_raised_again_by_the_next_check():
    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)

    carried_on = []
    with Signals() as signals, pytest.raises(Interrupted, match="interrupted by SIGTERM; nothing was changed"):
        Finalized()  # the handler raises inside __del__: Python reports it to sys.unraisablehook and goes on
        carried_on.append(True)
        signals.check()
    assert carried_on == [True]  # it was dropped, and the check is what raised it
