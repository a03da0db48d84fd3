#!/bin/sh
# cnspr handler: receive a file into the Downloads folder.
#
# Tag:   file
# Does:  saves a file sent by another device. The message body is
#          line 1:  the file name, ended by a newline (\n)
#          the rest: the file's bytes, unchanged
#        The name must be 1 to 240 bytes with no '/', no '..', no NUL, no
#        control character, and must not start with '.'; anything else is
#        refused (exit 2) and nothing is written. An existing file is never
#        overwritten: "report.pdf" becomes "report (1).pdf", "report (2).pdf"...
#        The folder is `xdg-user-dir DOWNLOAD`, or ~/Downloads when that tool
#        is missing or names no folder other than the home directory; it is
#        created when missing. The reply (standard output) is the saved path.
#        A notification says what arrived, when notify-send is there.
# Needs: only POSIX tools; xdg-user-dir (xdg-user-dirs) and notify-send
#        (libnotify-bin) are used when installed.
# Send:  cnspr-send-file PEER FILE          (examples/handlers/bin)
#        { printf '%s\n' report.pdf; cat report.pdf; } | cnspr send PEER file --reply
# Exit:  0 saved, 1 could not write, 2 refused.
set -eu

me='file'
max_name=240

die() {
    printf '%s: %s\n' "$me" "$1" >&2
    exit "${2:-1}"
}

refuse() {
    die "refused: $1" 2
}

home=${HOME:?HOME is not set}
dir=
if command -v xdg-user-dir >/dev/null 2>&1; then
    dir=$(xdg-user-dir DOWNLOAD 2>/dev/null) || dir=
fi
case $dir in
"" | "$home" | "$home/" | [!/]*) dir=$home/Downloads ;;
esac
mkdir -p -- "$dir" || die "cannot create $dir"

# Everything goes first to hidden files in the same folder, so the finished
# file appears under its name at once, complete, by a hard link.
raw=$(mktemp "$dir/.cnspr-file.XXXXXX") || die "cannot write in $dir"
part=
trap 'rm -f "$raw" ${part:+"$part"}' EXIT
trap 'exit 129' HUP
trap 'exit 130' INT
trap 'exit 143' TERM
cat >"$raw" || die "cannot write in $dir"

[ -s "$raw" ] || refuse 'empty message: the first line must be the file name'
# Bytes of the first line, its newline included.
header=$(head -n 1 "$raw" | wc -c)
[ "$header" -le "$((max_name + 1))" ] || refuse "file name longer than $max_name bytes"
[ -z "$(head -c "$header" "$raw" | tail -c 1)" ] ||
    refuse 'no newline after the file name: the first line must be the file name'
[ "$(head -n 1 "$raw" | tr -d '\000' | wc -c)" -eq "$header" ] ||
    refuse 'NUL byte in the file name'
name=$(head -n 1 "$raw")

case $name in
"") refuse 'empty file name' ;;
*/*) refuse 'file name contains "/"' ;;
*..*) refuse 'file name contains ".."' ;;
.*) refuse 'file name starts with "."' ;;
esac
[ "$(printf '%s' "$name" | tr -d '\001-\037\177')" = "$name" ] ||
    refuse 'control character in the file name'

part=$(mktemp "$dir/.cnspr-part.XXXXXX") || die "cannot write in $dir"
tail -c "+$((header + 1))" "$raw" >"$part" || die "cannot write in $dir"
rm -f "$raw"
size=$(wc -c <"$part")
# mktemp made it private; give it the permissions of a new file (umask).
chmod "$(umask -S)" "$part"
chmod a-x "$part"

# Places the received bytes at $1 unless something already has that name.
place() {
    [ ! -e "$1" ] && [ ! -L "$1" ] || return 1
    ln -- "$part" "$1" 2>/dev/null && return 0
    # No hard links on this file system: claim the name, then copy.
    [ ! -e "$1" ] && [ ! -L "$1" ] || return 1
    (set -C && : >"$1") 2>/dev/null || return 1
    if cat -- "$part" >"$1"; then
        return 0
    fi
    rm -f -- "$1"
    die "cannot write $1"
}

case $name in
?*.*) stem=${name%.*} ext=.${name##*.} ;;
*) stem=$name ext= ;;
esac
target=$name
n=0
until place "$dir/$target"; do
    n=$((n + 1))
    [ "$n" -le 999 ] || die "$name and its numbered copies up to ($((n - 1))) exist in $dir"
    target="$stem ($n)$ext"
done

printf '%s\n' "$dir/$target"
if command -v notify-send >/dev/null 2>&1; then
    notify-send -a cnspr -- "File from ${CNSPR_FROM:-another device}" \
        "$(printf '%s' "$target" | sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g') ($size bytes)" \
        >/dev/null 2>&1 || true
fi
