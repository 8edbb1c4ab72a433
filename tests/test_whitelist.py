import pytest

from lbsplit.config import SplitSettings
from lbsplit.errors import ConfigError
from lbsplit.whitelist import load, parse


def split(tmp_path, inline=(), file_text: bytes | None = None):
    path = None
    if file_text is not None:
        path = tmp_path / "whitelist.txt"
        path.write_bytes(file_text)
    return SplitSettings("hash", "$http_x_user_id", "$remote_addr", tuple(inline), path)


def test_file_and_list_are_merged_comments_and_blanks_ignored(tmp_path):
    wl = load(split(tmp_path, ["a1"], b"# staff\nb2\n\n  c3  \r\n#d4\n"))
    assert wl.ids == ("a1", "b2", "c3")
    assert wl.warnings == ()


def test_duplicates_dropped_with_a_warning(tmp_path):
    wl = load(split(tmp_path, ["a1", "a1"], b"a1\nb2\n"))
    assert wl.ids == ("a1", "b2")
    assert wl.warnings == ("whitelist: dropped 2 duplicate id(s)",)


def test_ids_that_differ_only_by_case_are_merged_and_named(tmp_path):
    wl = load(split(tmp_path, ["oAbC"], b"oabc\n"))
    assert wl.ids == ("oAbC",)
    assert len(wl.warnings) == 1
    assert "case" in wl.warnings[0] and "whitelist.txt line 1" in wl.warnings[0]


def test_every_invalid_line_is_reported_in_one_run(tmp_path):
    with pytest.raises(ConfigError) as e:
        load(split(tmp_path, [], b"good\nbad one\nok\nx\x01y\n" + b"z" * 300 + b"\n"))
    text = str(e.value)
    assert text.startswith("whitelist: 3 invalid id(s)")
    for n in (2, 4, 5):
        assert f"whitelist.txt line {n}:" in text
    assert "line 1:" not in text and "line 3:" not in text


@pytest.mark.parametrize(
    "content, message",
    [
        (b"abc\x00def\n", "looks binary"),
        (b"abc\n\xff\xfe\n", "line 2 is not UTF-8"),
    ],
)
def test_unreadable_whitelist_files(tmp_path, content, message):
    with pytest.raises(ConfigError, match=r"^split\.whitelist_file: .*" + message):
        load(split(tmp_path, [], content))


def test_missing_whitelist_file(tmp_path):
    s = split(tmp_path)
    s = SplitSettings(s.mode, s.key, s.fallback_key, (), tmp_path / "missing.txt")
    with pytest.raises(ConfigError, match="does not exist"):
        load(s)


def test_parse_keeps_first_spelling_order():
    assert parse([("split.whitelist", 0, "Z"), ("split.whitelist", 1, "y"), ("split.whitelist", 2, "z")]).ids == ("Z", "y")


from hypothesis import given, strategies as st  # noqa: E402


@given(st.lists(st.text(max_size=80), max_size=8))
def test_fast_path_agrees_with_the_per_id_rules(ids):
    from lbsplit.validate import whitelist_id_problem
    from lbsplit.whitelist import _all_fine

    assert _all_fine(ids) == all(whitelist_id_problem(i) is None for i in ids)
