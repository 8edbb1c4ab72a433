import pytest
from hypothesis import given, strategies as st

from lbsplit.errors import ConfigError
from lbsplit.model import Server, Stage, format_hundredths, parse_percent


@pytest.mark.parametrize(
    "text, hundredths",
    [("0", 0), ("10", 1000), ("30%", 3000), ("33.33", 3333), ("0.5", 50), ("0.01", 1), ("100", 10000), ("100.00", 10000)],
)
def test_parse_percent_accepts_two_decimals(text, hundredths):
    assert parse_percent(text) == hundredths


@pytest.mark.parametrize("text", ["", "-5", "100.01", "101", "1.234", "abc", "1e2", "10 %", "nan", "0x10", "1,5"])
def test_parse_percent_rejects_with_field_name(text):
    with pytest.raises(ConfigError, match="^percent: "):
        parse_percent(text)


@given(st.integers(min_value=0, max_value=10000))
def test_format_and_parse_round_trip(hundredths):
    assert parse_percent(format_hundredths(hundredths)) == hundredths


def test_stage_describe():
    assert Stage.off().describe() == "off"
    assert Stage.at(3350).describe() == "33.5%"


def test_server_line_lists_parameters_in_nginx_spelling():
    s = Server("10.0.0.1:8080", weight=2, max_fails=3, fail_timeout="10s", max_conns=100, backup=True)
    assert s.line() == "10.0.0.1:8080 weight=2 max_fails=3 fail_timeout=10s max_conns=100 backup"
    assert s.line(weight=7) == "10.0.0.1:8080 weight=7 max_fails=3 fail_timeout=10s max_conns=100 backup"
