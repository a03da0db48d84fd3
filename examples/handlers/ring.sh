#!/bin/sh
# cnspr handler: ring, to find this device.
#
# Tag:   ring
# Does:  shows an urgent notification ("Find my device", with the message
#        body if there is one, cut to 200 bytes) and plays a ringing sound
#        three times, with the first of these that works:
#          paplay with the freedesktop sound phone-incoming-call.oga (or
#            bell.oga, complete.oga) found under $XDG_DATA_DIRS/sounds;
#          canberra-gtk-play with the sound theme's phone-incoming-call;
#          the terminal bell on the daemon's terminal (/dev/tty), when the
#            daemon runs in one.
#        The reply says what was done.
# Needs: paplay (pulseaudio-utils, also works with PipeWire) and
#        sound-theme-freedesktop, or canberra-gtk-play (gnome-session-canberra,
#        libcanberra-gtk3-module); notify-send (libnotify-bin) for the
#        notification. Without any way to make a sound it exits 127.
# Send:  cnspr send PEER ring --reply
#        cnspr send PEER ring 'left it in the car?'
# Exit:  0 rang, 1 every sound player failed, 127 none available.
set -eu

me=ring
times=3
max_body=200

die() {
    printf '%s: %s\n' "$me" "$1" >&2
    exit "${2:-1}"
}

# The first ringing sound file found, on standard output.
sound_file() {
    dirs=${XDG_DATA_DIRS:-/usr/local/share:/usr/share}
    for name in phone-incoming-call bell complete; do
        rest=$dirs
        while [ -n "$rest" ]; do
            d=${rest%%:*}
            case $rest in
            *:*) rest=${rest#*:} ;;
            *) rest= ;;
            esac
            f=$d/sounds/freedesktop/stereo/$name.oga
            if [ -n "$d" ] && [ -r "$f" ]; then
                printf '%s\n' "$f"
                return 0
            fi
        done
    done
    return 1
}

play_paplay() {
    i=0
    while [ "$i" -lt "$times" ]; do
        paplay -- "$1" || return 1
        i=$((i + 1))
    done
}

# The terminal bell, when the daemon has a controlling terminal.
bell() {
    (: >/dev/tty) 2>/dev/null || return 1
    i=0
    while [ "$i" -lt "$times" ]; do
        [ "$i" -eq 0 ] || sleep 1
        printf '\a' >/dev/tty || return 1
        i=$((i + 1))
    done
}

# Printable text: drops control characters other than tab and newline, and
# (when iconv is there) invalid UTF-8 such as a character cut at the limit.
printable() {
    tr -d '\000-\010\013-\037\177' | {
        if command -v iconv >/dev/null 2>&1; then
            iconv -c -f UTF-8 -t UTF-8 2>/dev/null || true
        else
            cat
        fi
    }
}

escape_markup() {
    sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g'
}

from=$(printf '%s' "${CNSPR_FROM:-}" | head -c 64 | printable)
text=$(head -c "$max_body" | printable)
[ -n "$text" ] || text="${from:-Another device} is looking for this device."
text=$(printf '%s' "$text" | escape_markup)

notified=
if command -v notify-send >/dev/null 2>&1; then
    if notify-send -a cnspr -u critical -- 'Find my device' "$text"; then
        notified=notification
    else
        printf '%s: notify-send failed (exit %s)\n' "$me" "$?" >&2
    fi
else
    printf '%s: notify-send not found (install libnotify-bin): no notification\n' "$me" >&2
fi

played=
tried=
if command -v paplay >/dev/null 2>&1; then
    if sound=$(sound_file); then
        tried=1
        play_paplay "$sound" && played="sound (paplay)"
    else
        printf '%s: paplay found but no sound file: install sound-theme-freedesktop\n' "$me" >&2
    fi
fi
if [ -z "$played" ] && command -v canberra-gtk-play >/dev/null 2>&1; then
    tried=1
    canberra-gtk-play -i phone-incoming-call -l "$times" -d 'cnspr ring' &&
        played="sound (canberra-gtk-play)"
fi
if [ -z "$played" ] && bell; then
    played="terminal bell"
fi

if [ -z "$played" ]; then
    [ -n "$tried" ] || die 'no way to play a sound: install pulseaudio-utils (paplay) and sound-theme-freedesktop, or canberra-gtk-play; or run the daemon in a terminal for its bell' 127
    die 'could not play a sound (every player failed)'
fi
printf 'rang %s: %s%s\n' "${CNSPR_SELF_NAME:-this device}" "$played" "${notified:+, $notified}"
