#!/bin/sh
# cnspr handler: read the clipboard.
#
# Tag:   clipboard.get
# Does:  writes this device's clipboard to standard output, which
#        `cnspr send --reply` prints on the sending device: wl-paste when
#        WAYLAND_DISPLAY is set, else xclip (X11, DISPLAY). The reply carries
#        at most 1 MiB.
# Needs: wl-paste (package wl-clipboard) on Wayland, xclip on X11, and the
#        session's WAYLAND_DISPLAY or DISPLAY in the daemon's environment.
# Send:  cnspr send PEER clipboard.get --reply
# Exit:  0 read, 1 the tool failed (an empty clipboard, for wl-paste) or no
#        graphical session, 127 tool missing.
set -eu

me=clipboard.get

die() {
    printf '%s: %s\n' "$me" "$1" >&2
    exit "${2:-1}"
}

need() {
    command -v "$1" >/dev/null 2>&1 || die "$1 not found: install $2" 127
}

if [ -n "${WAYLAND_DISPLAY:-}" ]; then
    need wl-paste wl-clipboard
    set -- wl-paste --no-newline
elif [ -n "${DISPLAY:-}" ]; then
    need xclip xclip
    set -- xclip -selection clipboard -o
else
    die 'no graphical session: neither WAYLAND_DISPLAY nor DISPLAY is set in the daemon environment'
fi

"$@" </dev/null || die "$1 failed (exit $?)"
