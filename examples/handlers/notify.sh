#!/bin/sh
# cnspr handler: desktop notification.
#
# Tag:   notify
# Does:  shows the message body as a desktop notification titled with the
#        sender's device name (CNSPR_FROM). The body is cut to 1000 bytes
#        (an ellipsis marks the cut), control characters are dropped and
#        & < > are escaped, as the notification markup requires.
# Needs: notify-send (Debian/Ubuntu: libnotify-bin; Fedora/Arch: libnotify)
#        and the graphical session's D-Bus address in the daemon's environment.
# Send:  cnspr send PEER notify 'Dinner is ready'
# Exit:  0 shown, 1 notify-send failed, 127 notify-send missing.
set -eu

me=notify
max_title=64
max_body=1000

die() {
    printf '%s: %s\n' "$me" "$1" >&2
    exit "${2:-1}"
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

command -v notify-send >/dev/null 2>&1 ||
    die 'notify-send not found: install libnotify-bin (Debian, Ubuntu) or libnotify (Fedora, Arch)' 127

title=$(printf '%s' "${CNSPR_FROM:-}" | head -c "$max_title" | printable)
[ -n "$title" ] || title=cnspr

# One byte more than the limit tells whether the body was cut.
raw=$(head -c "$((max_body + 1))" | tr -d '\000')
size=$(printf '%s' "$raw" | wc -c)
body=$(printf '%s' "$raw" | head -c "$max_body" | printable | escape_markup)
if [ "$size" -gt "$max_body" ]; then
    body=$(printf '%s\342\200\246' "$body")
fi

if [ -n "$body" ]; then
    set -- "$title" "$body"
else
    set -- "$title"
fi
notify-send -a cnspr -- "$@" || die "notify-send failed (exit $?)"
