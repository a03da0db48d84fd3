"""ring.sh: urgent notification plus a ringing sound (paplay, else
canberra-gtk-play, else the terminal bell)."""

import os
import pty

import pytest

NOTIFY = ["-a", "cnspr", "-u", "critical", "--", "Find my device"]


@pytest.fixture
def sounds(sandbox):
    """An XDG data dir with freedesktop sounds; returns a function adding one."""
    data = sandbox.root / "share"
    stereo = data / "sounds" / "freedesktop" / "stereo"
    stereo.mkdir(parents=True)
    sandbox.env["XDG_DATA_DIRS"] = f"{sandbox.root / 'empty'}:{data}"

    def add(name):
        path = stereo / f"{name}.oga"
        path.write_bytes(b"OggS")
        return str(path)

    return add


def test_paplay_three_times_and_a_notification(sandbox, sounds):
    sandbox.stub("paplay", "canberra-gtk-play", "notify-send")
    sounds("bell")
    call_sound = sounds("phone-incoming-call")
    r = sandbox.run("ring.sh")
    assert r.returncode == 0, r.stderr
    assert [c["argv"] for c in sandbox.calls("paplay")] == [["--", call_sound]] * 3
    assert sandbox.calls("canberra-gtk-play") == []
    (note,) = sandbox.calls("notify-send")
    assert note["argv"] == NOTIFY + ["laptop is looking for this device."]
    assert r.out == "rang desk: sound (paplay), notification\n"


def test_message_body_goes_into_the_notification(sandbox, sounds):
    sandbox.stub("paplay", "notify-send")
    sounds("complete")
    r = sandbox.run("ring.sh", b"Left it in the <car>?\x07")
    assert r.returncode == 0, r.stderr
    (note,) = sandbox.calls("notify-send")
    assert note["argv"] == NOTIFY + ["Left it in the &lt;car&gt;?"]


def test_canberra_when_paplay_has_no_sound_file(sandbox):
    sandbox.stub("paplay", "canberra-gtk-play", "notify-send")
    sandbox.env["XDG_DATA_DIRS"] = str(sandbox.root / "nothing-here")
    r = sandbox.run("ring.sh")
    assert r.returncode == 0, r.stderr
    assert sandbox.calls("paplay") == []
    (call,) = sandbox.calls("canberra-gtk-play")
    assert call["argv"] == ["-i", "phone-incoming-call", "-l", "3", "-d", "cnspr ring"]
    assert "sound-theme-freedesktop" in r.stderr
    assert r.out == "rang desk: sound (canberra-gtk-play), notification\n"


def test_canberra_when_paplay_fails(sandbox, sounds):
    sandbox.stub("paplay", "canberra-gtk-play", "notify-send")
    sounds("bell")
    r = sandbox.run("ring.sh", env={"STUB_PAPLAY_EXIT": "1"})
    assert r.returncode == 0, r.stderr
    assert len(sandbox.calls("paplay")) == 1
    assert len(sandbox.calls("canberra-gtk-play")) == 1


def test_sound_without_notify_send_still_rings(sandbox, sounds):
    sandbox.stub("paplay")
    sounds("bell")
    r = sandbox.run("ring.sh")
    assert r.returncode == 0, r.stderr
    assert "notify-send not found" in r.stderr
    assert r.out == "rang desk: sound (paplay)\n"


def test_no_way_to_make_a_sound(sandbox):
    # No player, no notify-send, and no terminal (own session, no tty).
    r = sandbox.run("ring.sh")
    assert r.returncode == 127
    assert "no way to play a sound" in r.stderr
    assert "paplay" in r.stderr and "canberra-gtk-play" in r.stderr
    assert r.stdout == b""


def test_no_sound_but_the_notification_is_still_shown(sandbox):
    sandbox.stub("notify-send")
    r = sandbox.run("ring.sh")
    assert r.returncode == 127
    assert len(sandbox.calls("notify-send")) == 1


def test_every_player_failing(sandbox, sounds):
    sandbox.stub("paplay", "canberra-gtk-play")
    sounds("bell")
    env = {"STUB_PAPLAY_EXIT": "1", "STUB_CANBERRA_GTK_PLAY_EXIT": "1"}
    r = sandbox.run("ring.sh", env=env)
    assert r.returncode == 1
    assert "could not play a sound" in r.stderr


def test_terminal_bell_on_the_daemons_terminal(sandbox):
    sandbox.stub("notify-send")
    master, slave = pty.openpty()
    slave_path = os.ttyname(slave)

    def own_terminal():
        # A new session whose controlling terminal is the pty, like a daemon
        # started from a terminal.
        os.setsid()
        os.close(os.open(slave_path, os.O_RDWR))

    try:
        r = sandbox.run("ring.sh", start_new_session=False, preexec_fn=own_terminal)
        os.set_blocking(master, False)
        written = os.read(master, 1024)
    finally:
        os.close(master)
        os.close(slave)
    assert r.returncode == 0, r.stderr
    assert written == b"\a\a\a"
    assert r.out == "rang desk: terminal bell, notification\n"
