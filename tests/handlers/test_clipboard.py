"""clipboard/set.sh and clipboard/get.sh: wl-copy/wl-paste on Wayland, xclip on X11."""

import pytest

WAYLAND = {"WAYLAND_DISPLAY": "wayland-0", "DISPLAY": ":0"}
X11 = {"DISPLAY": ":0"}
BODY = b"some text\x00with a NUL\nand no final newline"


def test_set_on_wayland_uses_wl_copy_with_the_body(sandbox):
    sandbox.stub("wl-copy", "xclip")
    r = sandbox.run("clipboard/set.sh", BODY, env=WAYLAND)
    assert r.returncode == 0, r.stderr
    (call,) = sandbox.calls("wl-copy")
    assert call["argv"] == []
    assert call["stdin"].encode("latin-1") == BODY
    assert sandbox.calls("xclip") == []


def test_set_on_x11_uses_xclip_clipboard_selection(sandbox):
    sandbox.stub("wl-copy", "xclip")
    r = sandbox.run("clipboard/set.sh", BODY, env=X11)
    assert r.returncode == 0, r.stderr
    (call,) = sandbox.calls("xclip")
    assert call["argv"] == ["-selection", "clipboard", "-i"]
    assert call["stdin"].encode("latin-1") == BODY
    assert sandbox.calls("wl-copy") == []


@pytest.mark.parametrize("tool,env", [("wl-copy", WAYLAND), ("xclip", X11)])
def test_set_returns_while_the_tool_keeps_serving_the_clipboard(sandbox, tool, env):
    # wl-copy and xclip leave a process behind; it must not hold the
    # handler's output open (the daemon would wait for it).
    sandbox.stub(tool)
    key = "STUB_" + tool.upper().replace("-", "_") + "_FORK"
    r = sandbox.run("clipboard/set.sh", b"x", env={**env, key: "10"})
    assert r.returncode == 0, r.stderr
    assert r.elapsed < 5


@pytest.mark.parametrize("tool,env", [("wl-copy", WAYLAND), ("xclip", X11)])
def test_set_with_tool_missing(sandbox, tool, env):
    other = {"wl-copy": "xclip", "xclip": "wl-copy"}[tool]
    sandbox.stub(other)
    r = sandbox.run("clipboard/set.sh", b"x", env=env)
    assert r.returncode == 127
    assert f"{tool} not found" in r.stderr
    assert sandbox.calls(other) == []


def test_set_without_graphical_session(sandbox):
    sandbox.stub("wl-copy", "xclip")
    r = sandbox.run("clipboard/set.sh", b"x")
    assert r.returncode == 1
    assert "WAYLAND_DISPLAY" in r.stderr and "DISPLAY" in r.stderr
    assert sandbox.calls("wl-copy") == sandbox.calls("xclip") == []


def test_set_tool_failure_is_reported(sandbox):
    sandbox.stub("wl-copy")
    env = {**WAYLAND, "STUB_WL_COPY_EXIT": "1", "STUB_WL_COPY_STDERR": "Failed to connect to a Wayland server"}
    r = sandbox.run("clipboard/set.sh", b"x", env=env)
    assert r.returncode == 1
    assert "Failed to connect to a Wayland server" in r.stderr
    assert "wl-copy failed (exit 1)" in r.stderr


def test_get_on_wayland_answers_the_clipboard_bytes(sandbox):
    sandbox.stub("wl-paste", "xclip")
    content = "clip\x00board\n\u00e9".encode()
    (sandbox.root / "clip").write_bytes(content)
    r = sandbox.run("clipboard/get.sh", env={**WAYLAND, "STUB_WL_PASTE_STDOUT_FILE": str(sandbox.root / "clip")})
    assert r.returncode == 0, r.stderr
    assert r.stdout == content
    (call,) = sandbox.calls("wl-paste")
    assert call["argv"] == ["--no-newline"]
    assert sandbox.calls("xclip") == []


def test_get_on_x11_uses_xclip_output(sandbox):
    sandbox.stub("wl-paste", "xclip")
    r = sandbox.run("clipboard/get.sh", env={**X11, "STUB_XCLIP_STDOUT": "from X"})
    assert r.returncode == 0, r.stderr
    assert r.stdout == b"from X"
    (call,) = sandbox.calls("xclip")
    assert call["argv"] == ["-selection", "clipboard", "-o"]


@pytest.mark.parametrize("tool,env", [("wl-paste", WAYLAND), ("xclip", X11)])
def test_get_with_tool_missing(sandbox, tool, env):
    r = sandbox.run("clipboard/get.sh", env=env)
    assert r.returncode == 127
    assert f"{tool} not found" in r.stderr
    assert r.stdout == b""


def test_get_without_graphical_session(sandbox):
    sandbox.stub("wl-paste", "xclip")
    r = sandbox.run("clipboard/get.sh")
    assert r.returncode == 1
    assert "no graphical session" in r.stderr


def test_get_failure_is_reported(sandbox):
    sandbox.stub("wl-paste")
    env = {**WAYLAND, "STUB_WL_PASTE_EXIT": "1", "STUB_WL_PASTE_STDERR": "Nothing is copied"}
    r = sandbox.run("clipboard/get.sh", env=env)
    assert r.returncode == 1
    assert "Nothing is copied" in r.stderr
    assert "wl-paste failed (exit 1)" in r.stderr
