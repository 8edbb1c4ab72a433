"""The site's config flattened into one text for the gate's revert check (pure: files in a temp dir)."""

import pytest

from lbsplit.nginx.flatten import CannotFlatten, SiteCopy, flattened


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_includes_are_inlined_in_nginx_order_and_the_live_one_is_pointed_elsewhere(tmp_path):
    live = write(tmp_path / "out" / "lbsplit.conf", "map $a $b { default 1; }\n")
    write(tmp_path / "conf.d" / "b.conf", "gzip on;\n")
    write(tmp_path / "conf.d" / "a.conf", "server_tokens off;\n")
    write(tmp_path / "conf.d" / ".skip.conf", "not nginx at all {\n")  # a glob skips dot files, as glob(3) does
    conf = write(tmp_path / "nginx.conf",
                 f"events {{}}\nhttp {{\n    include conf.d/*.conf;\n    include {live};\n"
                 "    server { listen 127.0.0.1:1; location / { return 204; } }\n}\n")
    text = flattened(conf, live, tmp_path / "revert.conf").text
    assert text.index("server_tokens off;") < text.index("gzip on;") < text.index(f"include {tmp_path}/revert.conf;")
    assert "map $a" not in text and "conf.d" not in text and "not nginx" not in text
    assert "location / {" in text and "return 204;" in text


def test_a_config_that_never_includes_the_live_file_cannot_judge(tmp_path):
    conf = write(tmp_path / "nginx.conf", "events {}\nhttp {}\n")
    with pytest.raises(CannotFlatten, match="does not include"):
        flattened(conf, tmp_path / "lbsplit.conf", tmp_path / "revert.conf")


def test_an_include_loop_and_a_missing_file_are_named(tmp_path):
    live = write(tmp_path / "lbsplit.conf", "")
    write(tmp_path / "loop.conf", "include loop.conf;\n")
    conf = write(tmp_path / "nginx.conf", f"include {live};\ninclude loop.conf;\n")
    with pytest.raises(CannotFlatten, match="deeper than"):
        flattened(conf, live, tmp_path / "revert.conf")
    conf.write_text(f"include {live};\ninclude missing.conf;\n")
    with pytest.raises(CannotFlatten, match="missing.conf"):
        flattened(conf, live, tmp_path / "revert.conf")


def test_a_copy_is_current_until_a_file_it_read_or_a_glob_it_matched_changes(tmp_path):
    live = write(tmp_path / "out" / "lbsplit.conf", "")
    site = write(tmp_path / "conf.d" / "a.conf", "gzip on;\n")
    conf = write(tmp_path / "nginx.conf", f"events {{}}\nhttp {{\n    include conf.d/*.conf;\n    include {live};\n}}\n")
    made = (conf, live, tmp_path / "revert.conf")
    copy = flattened(*made)
    assert copy.current(*made) and SiteCopy.loads(copy.dumps()) == copy
    assert not copy.current(conf, live, tmp_path / "other.conf")  # made for another replacement
    assert not copy.current(tmp_path / "other-nginx.conf", live, tmp_path / "revert.conf")  # for another config
    site.write_text("gzip off;\n")  # the same size
    assert not copy.current(*made)
    copy = flattened(*made)
    write(tmp_path / "conf.d" / "b.conf", "server_tokens off;\n")  # a new file the glob picks up
    assert not copy.current(*made)
    copy = flattened(*made)
    (tmp_path / "conf.d" / "b.conf").unlink()
    assert not copy.current(*made)
    assert SiteCopy.loads("not json") is None and SiteCopy.loads('{"text": 1}') is None
