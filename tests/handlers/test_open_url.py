"""open-url.sh: http(s) URLs go to xdg-open; everything else is refused."""

import pytest


def test_https_url_is_opened(sandbox):
    sandbox.stub("xdg-open")
    url = "https://example.org/a?b=c&d=e#f"
    r = sandbox.run("open-url.sh", url.encode() + b"\n")
    assert r.returncode == 0, r.stderr
    assert [c["argv"] for c in sandbox.calls("xdg-open")] == [[url]]
    assert r.out == f"opened {url}\n"


@pytest.mark.parametrize(
    "body,url",
    [
        (b"http://example.org", "http://example.org"),
        (b"HTTPS://Example.org/X", "HTTPS://Example.org/X"),
        (b"  \n\thttps://example.org/  \r\n\n", "https://example.org/"),
        ("https://example.org/caf\u00e9".encode(), "https://example.org/caf\u00e9"),
        (b"https://[::1]:8080/", "https://[::1]:8080/"),
    ],
)
def test_accepted_forms(sandbox, body, url):
    sandbox.stub("xdg-open")
    r = sandbox.run("open-url.sh", body)
    assert r.returncode == 0, r.stderr
    assert [c["argv"] for c in sandbox.calls("xdg-open")] == [[url]]


@pytest.mark.parametrize(
    "body,why",
    [
        (b"file:///etc/passwd", 'scheme "file"'),
        (b"javascript:alert(1)", 'scheme "javascript"'),
        (b"ftp://example.org/", 'scheme "ftp"'),
        (b"mailto:me@example.org", 'scheme "mailto"'),
        (b"smb://host/share", 'scheme "smb"'),
        (b"example.org", "no scheme"),
        (b"/usr/bin/xterm", "no scheme"),
        (b"--help", "no scheme"),
        (b"-https://example.org", 'scheme "-https"'),
        (b"http:/example.org", 'scheme "http"'),
        (b"https:///etc/passwd", 'scheme "https"'),
        (b"https://", 'scheme "https"'),
        (b"", "empty"),
        (b" \n \n", "empty"),
        (b"https://example.org/a b", "not one URL"),
        (b"https://a.example\nhttps://b.example", "not one URL"),
        (b"https://example.org/\x07", "not one URL"),
        (b"https://example.org/\x1b]8;;", "not one URL"),
        (b"https://example.org/\x00.sh", "NUL"),
        (b"https://example.org/" + b"a" * 9000, "longer than 8192 bytes"),
    ],
)
def test_refused(sandbox, body, why):
    sandbox.stub("xdg-open")
    r = sandbox.run("open-url.sh", body)
    assert r.returncode == 2
    assert "refused" in r.stderr and why in r.stderr, r.stderr
    assert sandbox.calls("xdg-open") == []
    assert r.stdout == b""


def test_refused_even_without_xdg_open(sandbox):
    r = sandbox.run("open-url.sh", b"file:///etc/passwd")
    assert r.returncode == 2


def test_missing_xdg_open(sandbox):
    r = sandbox.run("open-url.sh", b"https://example.org/")
    assert r.returncode == 127
    assert "xdg-open not found" in r.stderr


def test_xdg_open_failure_is_reported(sandbox):
    sandbox.stub("xdg-open")
    env = {"STUB_XDG_OPEN_EXIT": "3", "STUB_XDG_OPEN_STDERR": "xdg-open: no method available for opening"}
    r = sandbox.run("open-url.sh", b"https://example.org/", env=env)
    assert r.returncode == 1
    assert "no method available" in r.stderr
    assert "xdg-open failed (exit 3)" in r.stderr


def test_xdg_open_that_blocks_does_not_hold_the_handler(sandbox):
    # Without a desktop environment xdg-open may run the browser in the
    # foreground; the handler answers after 3 s and leaves it running.
    sandbox.stub("xdg-open")
    r = sandbox.run("open-url.sh", b"https://example.org/", env={"STUB_XDG_OPEN_SLEEP": "30"})
    assert r.returncode == 0, r.stderr
    assert r.out == "opening https://example.org/ (xdg-open still running)\n"
    assert 2.5 < r.elapsed < 10
    assert len(sandbox.calls("xdg-open")) == 1


def test_no_temporary_files_left(sandbox):
    sandbox.stub("xdg-open")
    sandbox.run("open-url.sh", b"https://example.org/")
    sandbox.run("open-url.sh", b"file:///x")
    assert list(sandbox.tmpdir.iterdir()) == []
