import pytest

from lbsplit.errors import ConfigError
from lbsplit.validate import check_variable, parse_server, whitelist_id_problem


@pytest.mark.parametrize("var", ["$http_x_user_id", "$cookie_uid", "$arg_user_id", "$remote_addr"])
def test_variables_accepted(var):
    assert check_variable(var, "split.key") == var


@pytest.mark.parametrize(
    "var", ["http_x_user_id", "$", "$a b", "$x;include /etc/passwd", "${x}", "$lbsplit_key", "$a-b", "", 5, None]
)
def test_variables_rejected_naming_the_field(var):
    with pytest.raises(ConfigError, match=r"^split\.key: "):
        check_variable(var, "split.key")


@pytest.mark.parametrize(
    "text, line",
    [
        ("10.0.0.1:8080", "10.0.0.1:8080"),
        ("backend-1.internal:80 weight=3", "backend-1.internal:80 weight=3"),
        ("[::1]:8080 max_fails=2 fail_timeout=30s", "[::1]:8080 max_fails=2 fail_timeout=30s"),
        ("unix:/run/app.sock down", "unix:/run/app.sock down"),
        ("10.0.0.2:8080 backup max_conns=10", "10.0.0.2:8080 max_conns=10 backup"),
    ],
)
def test_servers_accepted(text, line):
    assert parse_server(text, "upstreams.v1[0]").line() == line


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("10.0.0.1", "has no port"),
        ("10.0.0.1:0", "port"),
        ("10.0.0.1:70000", "port"),
        ("10.0.0.1:80; include /etc/shadow", "syntax"),
        ("10.0.0.1:80 }", "syntax"),
        ("10.0.0.1:80 weight=0", "weight"),
        ("10.0.0.1:80 weight=x", "weight"),
        ("10.0.0.1:80 resolve", "unknown server parameter"),
        ("10.0.0.1:80 slow_start=10s", "unknown server parameter"),
        ("10.0.0.1:80 fail_timeout=soon", "fail_timeout"),
        ("[zz::1]:80", "ipv6"),
        ("under_score:80", "host name"),
        ("unix:relative.sock", "unix socket"),
        ("10.0.0.1:80 $x", "syntax"),
        ("10.0.0.1:80\u2003down", "U+2003"),  # for nginx one word, for str.split() two
        ("10.0.0.1:80\u00a0weight=2", "U+00A0"),
        ("", "expected a string"),
        (8080, "expected a string"),
    ],
)
def test_servers_rejected_naming_the_field(text, fragment):
    with pytest.raises(ConfigError, match=r"^upstreams\.v2\[1\]: ") as e:
        parse_server(text, "upstreams.v2[1]")
    assert fragment in str(e.value)


@pytest.mark.parametrize("user_id", ["test_user_001", "o6_bmjrPTlm6_2sgVt7hMZOPfL2M", 'a"b', "a;b", "{x}", "$x", "a\\b", "#x", "default", "~.*", "用户1"])
def test_whitelist_ids_that_are_escaped_not_rejected(user_id):
    assert whitelist_id_problem(user_id) is None


@pytest.mark.parametrize("user_id, fragment", [("", "empty"), ("a b", "whitespace"), ("a\tb", "control"), ("a\x00", "control"), ("x" * 256, "bytes long")])
def test_whitelist_ids_rejected(user_id, fragment):
    assert fragment in whitelist_id_problem(user_id)
