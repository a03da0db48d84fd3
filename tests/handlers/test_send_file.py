"""bin/cnspr-send-file: builds the body file.sh expects and sends it with
`cnspr send`; checks the name before anything is sent."""

import pytest

SEND = "bin/cnspr-send-file"


def send(box, *args, env=None):
    return box.run(SEND, args=args, env=env, as_handler=False)


@pytest.fixture
def doc(sandbox):
    path = sandbox.root / "My Report.pdf"
    path.write_bytes(b"%PDF\x00\n\xff binary")
    return path


def test_sends_name_line_then_bytes(sandbox, doc):
    sandbox.stub("cnspr")
    r = send(sandbox, "laptop", str(doc))
    assert r.returncode == 0, r.stderr
    (call,) = sandbox.calls("cnspr")
    assert call["argv"] == ["send", "--reply", "--timeout", "60", "laptop", "file"]
    assert call["stdin"].encode("latin-1") == b"My Report.pdf\n%PDF\x00\n\xff binary"


def test_name_timeout_and_tag_options(sandbox, doc):
    sandbox.stub("cnspr")
    r = send(sandbox, "-t", "300", "-T", "inbox.file", "phone", str(doc), "renamed.pdf")
    assert r.returncode == 0, r.stderr
    (call,) = sandbox.calls("cnspr")
    assert call["argv"] == ["send", "--reply", "--timeout", "300", "phone", "inbox.file"]
    assert call["stdin"].encode("latin-1").startswith(b"renamed.pdf\n%PDF")


def test_cnspr_send_status_is_passed_on(sandbox, doc):
    sandbox.stub("cnspr")
    r = send(sandbox, "laptop", str(doc), env={"STUB_CNSPR_EXIT": "3", "STUB_CNSPR_STDOUT": "x"})
    assert r.returncode == 3


@pytest.mark.parametrize("name", [".bashrc", "a..b", "a\rb", "x" * 241])
def test_names_the_handler_would_refuse_are_refused_here(sandbox, name):
    sandbox.stub("cnspr")
    path = sandbox.root / "ok.txt"
    path.write_bytes(b"x")
    r = send(sandbox, "laptop", str(path), name)
    assert r.returncode == 2
    assert "would be refused" in r.stderr
    assert sandbox.calls("cnspr") == []


def test_dotfile_needs_a_name(sandbox):
    sandbox.stub("cnspr")
    path = sandbox.root / ".config.toml"
    path.write_bytes(b"x")
    assert send(sandbox, "laptop", str(path)).returncode == 2
    assert send(sandbox, "laptop", str(path), "config.toml").returncode == 0


@pytest.mark.parametrize("args", [[], ["laptop"], ["a", "b", "c", "d"], ["-x", "laptop", "f"]])
def test_usage(sandbox, args):
    sandbox.stub("cnspr")
    r = send(sandbox, *args)
    assert r.returncode == 2
    assert "usage:" in r.stderr


def test_missing_or_unreadable_file(sandbox):
    sandbox.stub("cnspr")
    r = send(sandbox, "laptop", str(sandbox.root / "nope"))
    assert r.returncode == 2
    assert "not a regular file" in r.stderr
    r = send(sandbox, "laptop", str(sandbox.root))
    assert r.returncode == 2
    assert sandbox.calls("cnspr") == []


def test_too_large_for_a_message(sandbox):
    sandbox.stub("cnspr")
    path = sandbox.root / "big"
    with open(path, "wb") as f:
        f.truncate(20 * 1024 * 1024)
    r = send(sandbox, "laptop", str(path))
    assert r.returncode == 2
    assert "20 MiB" in r.stderr
    assert sandbox.calls("cnspr") == []


def test_refuses_to_run_as_a_handler(sandbox):
    sandbox.stub("cnspr")
    r = sandbox.run(SEND, b"", tag="bin.cnspr-send-file")
    assert r.returncode == 2
    assert "not a handler" in r.stderr
    assert sandbox.calls("cnspr") == []


def test_what_it_sends_is_what_the_file_handler_saves(sandbox, doc):
    sandbox.stub("cnspr")
    assert send(sandbox, "laptop", str(doc)).returncode == 0
    (call,) = sandbox.calls("cnspr")
    r = sandbox.run("file.sh", call["stdin"].encode("latin-1"))
    assert r.returncode == 0, r.stderr
    assert (sandbox.home / "Downloads" / "My Report.pdf").read_bytes() == doc.read_bytes()
