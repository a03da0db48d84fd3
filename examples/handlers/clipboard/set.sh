#!/bin/sh
# cnspr handler: set the clipboard.
#
# Tag:   clipboard.set
# Does:  puts the message body, byte for byte, on this device's clipboard:
#        wl-copy when WAYLAND_DISPLAY is set, else xclip (X11, DISPLAY).
# Needs: wl-copy (package wl-clipboard) on Wayland, xclip on X11, and the
#        session's WAYLAND_DISPLAY or DISPLAY in the daemon's environment.
# Send:  cnspr send PEER clipboard.set 'some text'
#        wl-paste | cnspr send PEER clipboard.set
# Exit:  0 set, 1 the tool failed or no graphical session, 127 tool missing.
set -eu

me=clipboard.set

die() {
    printf '%s: %s\n' "$me" "$1" >&2
    exit "${2:-1}"
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found: install $2" 127
}

if [ -n "${WAYLAND_DISPLAY:-}" ]; then
    need wl-copy wl-clipboard
    set -- wl-copy
elif [ -n "${DISPLAY:-}" ]; then
    need xclip xclip
    set -- xclip -selection clipboard -i
else
    die 'no graphical session: neither WAYLAND_DISPLAY nor DISPLAY is set in the daemon environment'
fi

# Both tools leave a process behind that serves the clipboard. It must not
# keep this handler's output open, so its messages go to a file that is shown
# only when the tool fails.
err=$(mktemp)
trap 'rm -f "$err"' EXIT
if "$@" >/dev/null 2>"$err"; then
    exit 0
else
    status=$?
    cat -- "$err" >&2
    die "$1 failed (exit $status)"
fi
