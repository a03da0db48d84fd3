#!/bin/sh
# cnspr handler: open a web page.
#
# Tag:   open-url
# Does:  opens the URL in the message body with xdg-open (the default
#        browser). Only http:// and https:// URLs with a host are accepted;
#        anything else (file:, javascript:, a command, several lines, spaces,
#        control characters, more than 8 KiB) is refused with exit 2 and a
#        message on standard error. Surrounding blanks and newlines are ignored.
# Needs: xdg-open (package xdg-utils) and the graphical session's variables
#        in the daemon's environment.
# Send:  cnspr send PEER open-url 'https://example.org/'
# Exit:  0 opened (or still opening after 3 s), 1 xdg-open failed,
#        2 refused, 127 xdg-open missing.
set -eu

me=open-url
max_len=8192
# How long to wait for xdg-open's verdict. Without a desktop environment it
# may run the browser in the foreground and return only when it closes.
wait_tenths=30

die() {
    printf '%s: %s\n' "$me" "$1" >&2
    exit "${2:-1}"
}

refuse() {
    die "refused: $1" 2
}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM

head -c "$((max_len + 1))" >"$tmp/body"
size=$(wc -c <"$tmp/body")
[ "$size" -le "$max_len" ] || refuse "longer than $max_len bytes"
[ "$(tr -d '\000' <"$tmp/body" | wc -c)" -eq "$size" ] || refuse 'contains a NUL byte'

# Blanks and newlines around the URL are dropped; none may remain inside.
url=$(sed -e 's/^[[:space:]]*//' -e 's/[[:space:]]*$//' "$tmp/body" | sed -e '/^$/d')
[ -n "$url" ] || refuse 'empty message: send the URL as the body'
[ "$(printf '%s' "$url" | tr -d '\001-\040\177')" = "$url" ] ||
    refuse 'not one URL: spaces, newlines or control characters inside'

case $url in
[Hh][Tt][Tt][Pp]://[!/]* | [Hh][Tt][Tt][Pp][Ss]://[!/]*) ;;
*:*)
    scheme=$(printf '%s' "${url%%:*}" | head -c 32)
    refuse "only http and https URLs are opened (scheme \"$scheme\")"
    ;;
*) refuse 'only http and https URLs are opened (no scheme)' ;;
esac

command -v xdg-open >/dev/null 2>&1 ||
    die 'xdg-open not found: install xdg-utils' 127

# xdg-open runs in the background and records its exit status; a browser it
# starts keeps running after this handler has answered.
(
    status=0
    xdg-open "$url" </dev/null >/dev/null 2>"$tmp/err" || status=$?
    echo "$status" >"$tmp/status"
) </dev/null >/dev/null 2>&1 &

i=0
while [ ! -s "$tmp/status" ] && [ "$i" -lt "$wait_tenths" ]; do
    sleep 0.1
    i=$((i + 1))
done

if [ ! -s "$tmp/status" ]; then
    printf 'opening %s (xdg-open still running)\n' "$url"
    exit 0
fi
status=$(cat "$tmp/status")
if [ "$status" -ne 0 ]; then
    cat -- "$tmp/err" >&2
    die "xdg-open failed (exit $status)"
fi
printf 'opened %s\n' "$url"
