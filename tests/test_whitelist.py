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


from hypothesis import example, given, settings, strategies as st  # noqa: E402


@given(st.lists(st.text(max_size=80), max_size=8))
def test_fast_path_agrees_with_the_per_id_rules(ids):
    from lbsplit.validate import whitelist_id_problem
    from lbsplit.whitelist import _all_fine

    assert _all_fine(ids) == all(whitelist_id_problem(i) is None for i in ids)


def _line_by_line(s):
    """The per-line reading, with every warning and error: what load() must agree with."""
    from lbsplit.whitelist import read_file

    entries = [("split.whitelist", i, user_id) for i, user_id in enumerate(s.whitelist)]
    if s.whitelist_file is not None:
        entries += read_file(s.whitelist_file)
    return parse(entries)


PLAIN = st.text(st.sampled_from(list("aAbBzZ09-_.é#") + ["\u00c9"]), min_size=1, max_size=4)
ODD = st.sampled_from(["", "# note", "#x", "  padded\t", "a\r", "Aa", "aA", "é", "É"])  # read, with care
BAD = st.sampled_from(["bad id", "\x0b", "x\u2028"])  # an error, named by line


@settings(max_examples=400)
@example(inline=[], lines=["a", "#x", "b"])
@example(inline=["A"], lines=["a"])
@example(inline=[], lines=[" a", "b\r"])
@given(inline=st.lists(st.one_of(PLAIN, ODD), max_size=3),
       lines=st.lists(st.one_of(PLAIN, PLAIN, PLAIN, ODD, ODD, BAD), max_size=12))
def test_whole_file_reading_agrees_with_line_by_line(tmp_path_factory, inline, lines):
    # load() reads a plain file in whole-string operations; on any file, its ids, warnings
    # and errors must be those of the line-by-line reading.
    s = split(tmp_path_factory.mktemp("wl"), inline, "\n".join(lines).encode("utf-8"))
    try:
        expected = _line_by_line(s)
    except ConfigError as e:
        with pytest.raises(ConfigError) as got:
            load(s)
        assert str(got.value) == str(e)
        return
    assert load(s) == expected


def test_a_plain_large_file_keeps_order_and_has_no_warning(tmp_path):
    ids = [f"User-{i:06d}" for i in range(50_000)]
    s = split(tmp_path, ["vip"], ("\n".join(ids) + "\n").encode())
    assert load(s).ids == ("vip", *ids) and load(s).warnings == ()
    clash = split(tmp_path, ["user-000007"], ("\n".join(ids) + "\n").encode())
    assert load(clash) == _line_by_line(clash) and len(load(clash).ids) == len(ids)


def test_the_ascii_shortcut_rejects_exactly_what_the_id_rules_reject():
    from lbsplit.validate import ID_TROUBLE_RE
    from lbsplit.whitelist import _ASCII_TROUBLE

    assert {c for c in range(128) if ID_TROUBLE_RE.search(chr(c))} == set(_ASCII_TROUBLE)
