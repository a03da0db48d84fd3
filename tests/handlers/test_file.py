"""file.sh: first line of the body = file name, the rest = the file's bytes,
saved in the Downloads folder, never overwriting, never outside it."""

import os
import signal
import stat
import subprocess
import time

import pytest

from conftest import EXAMPLES, message_env

CONTENT = bytes(range(256)) + b"\nline\n\x00\r\n no final newline"


def downloads(box):
    return box.home / "Downloads"


def listing(d):
    return sorted(p.name for p in d.iterdir()) if d.exists() else []


def test_saves_the_body_after_the_name_line(sandbox):
    r = sandbox.run("file.sh", b"report.pdf\n" + CONTENT)
    assert r.returncode == 0, r.stderr
    saved = downloads(sandbox) / "report.pdf"
    assert saved.read_bytes() == CONTENT
    assert r.out == f"{saved}\n"
    assert listing(downloads(sandbox)) == ["report.pdf"]  # no hidden leftovers


def test_empty_file(sandbox):
    r = sandbox.run("file.sh", b"empty.txt\n")
    assert r.returncode == 0, r.stderr
    assert (downloads(sandbox) / "empty.txt").read_bytes() == b""


def test_large_file(sandbox):
    content = os.urandom(1 << 20) * 5
    r = sandbox.run("file.sh", b"big.bin\n" + content)
    assert r.returncode == 0, r.stderr
    assert (downloads(sandbox) / "big.bin").read_bytes() == content


@pytest.mark.parametrize(
    "name",
    ["r\u00e9sum\u00e9 2024.pdf", "-rf", "a b  c", "x" * 240, "what?*[x].txt", "~", "a.b.c", "trailing.", "$(id)"],
)
def test_unusual_but_safe_names(sandbox, name):
    r = sandbox.run("file.sh", name.encode() + b"\n" + b"data")
    assert r.returncode == 0, r.stderr
    assert (downloads(sandbox) / name).read_bytes() == b"data"
    assert listing(downloads(sandbox)) == [name]
    assert listing(sandbox.home) == ["Downloads"]


def test_never_overwrites_and_numbers_copies(sandbox):
    dl = downloads(sandbox)
    dl.mkdir()
    (dl / "report.pdf").write_bytes(b"original")
    for _ in range(2):
        r = sandbox.run("file.sh", b"report.pdf\nnew")
        assert r.returncode == 0, r.stderr
    assert (dl / "report.pdf").read_bytes() == b"original"
    assert (dl / "report (1).pdf").read_bytes() == b"new"
    assert (dl / "report (2).pdf").read_bytes() == b"new"
    assert r.out == f"{dl / 'report (2).pdf'}\n"


def test_copies_of_a_name_without_extension(sandbox):
    dl = downloads(sandbox)
    dl.mkdir()
    (dl / "notes").write_bytes(b"original")
    r = sandbox.run("file.sh", b"notes\nnew")
    assert r.returncode == 0, r.stderr
    assert (dl / "notes (1)").read_bytes() == b"new"


def test_an_existing_directory_or_symlink_is_not_written_through(sandbox):
    dl = downloads(sandbox)
    dl.mkdir()
    (dl / "dir.txt").mkdir()
    (dl / "link.txt").symlink_to(sandbox.home / "target.txt")  # dangling
    for name in ("dir.txt", "link.txt"):
        r = sandbox.run("file.sh", name.encode() + b"\nnew")
        assert r.returncode == 0, r.stderr
        stem = name[: -len(".txt")]
        assert (dl / f"{stem} (1).txt").read_bytes() == b"new"
    assert listing(dl / "dir.txt") == []
    assert not (sandbox.home / "target.txt").exists()


@pytest.mark.parametrize(
    "body,why",
    [
        (b"../escape\ndata", "contains \"/\""),
        (b"../../.bashrc\ndata", "contains \"/\""),
        (b"/etc/passwd\ndata", "contains \"/\""),
        (b"a/b\ndata", "contains \"/\""),
        (b"..\ndata", "contains \"..\""),
        (b"a..b\ndata", "contains \"..\""),
        (b".\ndata", "starts with \".\""),
        (b".bashrc\ndata", "starts with \".\""),
        (b".cnspr-part.x\ndata", "starts with \".\""),
        (b"\ndata", "empty file name"),
        (b"x\x00y\ndata", "NUL"),
        (b"\x00\ndata", "NUL"),
        (b"x\ry\ndata", "control character"),
        (b"report.pdf\r\ndata", "control character"),
        (b"\x1b[2Jx\ndata", "control character"),
        (b"x" * 241 + b"\ndata", "longer than 240 bytes"),
        (b"x" * 100000, "longer than 240 bytes"),
        (b"justaname", "no newline after the file name"),
        (b"", "empty message"),
    ],
)
def test_refused_names_write_nothing(sandbox, body, why):
    r = sandbox.run("file.sh", body)
    assert r.returncode == 2
    assert "refused" in r.stderr and why in r.stderr, r.stderr
    assert r.stdout == b""
    assert listing(downloads(sandbox)) == []
    assert listing(sandbox.home) == ["Downloads"]
    assert listing(sandbox.root) == ["base", "home", "log", "stubs", "tmp"]


def test_folder_from_xdg_user_dir(sandbox):
    sandbox.stub("xdg-user-dir")
    target = sandbox.home / "Téléchargements"
    r = sandbox.run("file.sh", b"a.txt\nA", env={"STUB_XDG_USER_DIR_STDOUT": f"{target}\n"})
    assert r.returncode == 0, r.stderr
    assert (target / "a.txt").read_bytes() == b"A"
    assert [c["argv"] for c in sandbox.calls("xdg-user-dir")] == [["DOWNLOAD"]]
    assert not downloads(sandbox).exists()


@pytest.mark.parametrize("answer", ["{home}\n", "{home}/\n", "\n", "relative/dir\n"])
def test_xdg_user_dir_without_a_download_folder(sandbox, answer):
    # xdg-user-dir prints the home directory when no folder is configured.
    sandbox.stub("xdg-user-dir")
    env = {"STUB_XDG_USER_DIR_STDOUT": answer.format(home=sandbox.home)}
    r = sandbox.run("file.sh", b"a.txt\nA", env=env)
    assert r.returncode == 0, r.stderr
    assert (downloads(sandbox) / "a.txt").read_bytes() == b"A"


def test_xdg_user_dir_failing(sandbox):
    sandbox.stub("xdg-user-dir")
    r = sandbox.run("file.sh", b"a.txt\nA", env={"STUB_XDG_USER_DIR_EXIT": "1"})
    assert r.returncode == 0, r.stderr
    assert (downloads(sandbox) / "a.txt").read_bytes() == b"A"


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_permissions_follow_the_umask(sandbox, umask, mode):
    r = sandbox.run("file.sh", b"a.txt\nA", umask=umask)
    assert r.returncode == 0, r.stderr
    assert stat.S_IMODE((downloads(sandbox) / "a.txt").stat().st_mode) == mode


def test_notification_when_notify_send_is_there(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("file.sh", b"a&b.txt\nABC")
    assert r.returncode == 0, r.stderr
    (call,) = sandbox.calls("notify-send")
    assert call["argv"] == ["-a", "cnspr", "--", "File from laptop", "a&amp;b.txt (3 bytes)"]


def test_a_failing_notification_does_not_fail_the_transfer(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("file.sh", b"a.txt\nA", env={"STUB_NOTIFY_SEND_EXIT": "1"})
    assert r.returncode == 0, r.stderr
    assert (downloads(sandbox) / "a.txt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_unwritable_folder(sandbox):
    dl = downloads(sandbox)
    dl.mkdir()
    dl.chmod(0o500)
    try:
        r = sandbox.run("file.sh", b"a.txt\nA")
    finally:
        dl.chmod(0o700)
    assert r.returncode == 1
    assert "cannot write" in r.stderr


def test_downloads_is_not_a_folder(sandbox):
    (sandbox.home / "Downloads").write_bytes(b"a file")
    r = sandbox.run("file.sh", b"a.txt\nA")
    assert r.returncode == 1
    assert "cannot create" in r.stderr
    assert (sandbox.home / "Downloads").read_bytes() == b"a file"


def test_terminated_while_reading_leaves_nothing(sandbox):
    env = {**sandbox.env, **message_env("file")}
    proc = subprocess.Popen([str(EXAMPLES / "file.sh")], cwd=EXAMPLES, env=env,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdin.write(b"a.txt\npartial")
    proc.stdin.flush()
    dl = downloads(sandbox)
    deadline = time.monotonic() + 5
    while not listing(dl) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(listing(dl)) == 1  # the hidden file being received
    proc.send_signal(signal.SIGTERM)
    proc.communicate(timeout=5)
    assert proc.returncode == 143
    assert listing(dl) == []
