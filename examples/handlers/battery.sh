#!/bin/sh
# cnspr handler: battery status.
#
# Tag:   battery
# Does:  answers with one line per battery of this device, read from
#        /sys/class/power_supply/*/ (type "Battery"; the batteries of mice
#        and other devices, scope "Device", are left out):
#          BAT0: 87% Discharging
#        The percentage is `capacity`, or energy_now/energy_full (or
#        charge_now/charge_full) when there is none. The answer is
#        "no battery" when there is none. SYSFS_PATH replaces /sys (tests).
# Needs: nothing beyond POSIX tools.
# Send:  cnspr send PEER battery --reply
#        cnspr send --all battery --reply
# Exit:  0.
set -eu

root=${SYSFS_PATH:-/sys}/class/power_supply

# The content of file $1 if it is a plain number, else nothing.
number() {
    v=$(cat -- "$1" 2>/dev/null) || return 0
    case $v in
    '' | *[!0-9]*) ;;
    *) printf '%s' "$v" ;;
    esac
}

percent() {
    p=$(number "$1/capacity")
    if [ -n "$p" ]; then
        printf '%s%%' "$p"
        return 0
    fi
    for kind in energy charge; do
        now=$(number "$1/${kind}_now")
        full=$(number "$1/${kind}_full")
        if [ -n "$now" ] && [ -n "$full" ] && [ "$full" -gt 0 ]; then
            printf '%s%%' "$((now * 100 / full))"
            return 0
        fi
    done
    printf '?%%'
}

found=0
for d in "$root"/*; do
    [ -d "$d" ] || continue
    [ "$(cat -- "$d/type" 2>/dev/null || true)" = Battery ] || continue
    [ "$(cat -- "$d/scope" 2>/dev/null || true)" != Device ] || continue
    status=$(head -n 1 -- "$d/status" 2>/dev/null | tr -cd 'A-Za-z -' || true)
    printf '%s: %s %s\n' "${d##*/}" "$(percent "$d")" "${status:-Unknown}"
    found=$((found + 1))
done
[ "$found" -gt 0 ] || echo 'no battery'
