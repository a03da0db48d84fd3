"""notify.sh: message body -> desktop notification titled with the sender."""

import shutil

import pytest

ELLIPSIS = "\u2026"


def notify_args(box):
    calls = box.calls("notify-send")
    assert len(calls) == 1
    return calls[0]["argv"]


def test_title_is_the_sender_and_body_is_stdin(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("notify.sh", b"Dinner is ready\n")
    assert r.returncode == 0, r.stderr
    assert notify_args(sandbox) == ["-a", "cnspr", "--", "laptop", "Dinner is ready"]


def test_body_starting_with_a_dash_is_not_an_option(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("notify.sh", b"--help")
    assert r.returncode == 0, r.stderr
    assert notify_args(sandbox)[-2:] == ["laptop", "--help"]


def test_markup_characters_are_escaped_and_control_characters_dropped(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("notify.sh", b"a < b & c > d\x07\x1b[31m\x00 end\tx\nline 2")
    assert r.returncode == 0, r.stderr
    assert notify_args(sandbox)[-1] == "a &lt; b &amp; c &gt; d[31m end\tx\nline 2"


def test_long_body_is_cut_with_an_ellipsis(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("notify.sh", b"x" * 5000)
    assert r.returncode == 0, r.stderr
    assert notify_args(sandbox)[-1] == "x" * 1000 + ELLIPSIS


def test_body_at_the_limit_is_not_cut(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("notify.sh", b"y" * 1000)
    assert r.returncode == 0, r.stderr
    assert notify_args(sandbox)[-1] == "y" * 1000


@pytest.mark.skipif(shutil.which("iconv") is None, reason="iconv not installed")
def test_a_character_cut_at_the_limit_is_dropped(sandbox):
    sandbox.stub("notify-send")
    body = ("x" * 999 + "\u00e9" * 10).encode()
    r = sandbox.run("notify.sh", body)
    assert r.returncode == 0, r.stderr
    assert notify_args(sandbox)[-1] == "x" * 999 + ELLIPSIS


def test_utf8_is_kept(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("notify.sh", "Grüße, 日本".encode(), env={"CNSPR_FROM": "téléphone"})
    assert r.returncode == 0, r.stderr
    assert notify_args(sandbox)[-2:] == ["téléphone", "Grüße, 日本"]


def test_empty_body_gives_a_title_only_notification(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("notify.sh", b"")
    assert r.returncode == 0, r.stderr
    assert notify_args(sandbox) == ["-a", "cnspr", "--", "laptop"]


def test_title_without_sender_name(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("notify.sh", b"hi", unset=("CNSPR_FROM",))
    assert r.returncode == 0, r.stderr
    assert notify_args(sandbox)[-2:] == ["cnspr", "hi"]


def test_missing_notify_send(sandbox):
    r = sandbox.run("notify.sh", b"hello")
    assert r.returncode == 127
    assert "notify-send not found" in r.stderr
    assert r.stdout == b""


def test_notify_send_failing(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("notify.sh", b"hello", env={"STUB_NOTIFY_SEND_EXIT": "3"})
    assert r.returncode == 1
    assert "notify-send failed (exit 3)" in r.stderr
