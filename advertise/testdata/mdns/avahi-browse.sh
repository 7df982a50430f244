#!/bin/sh
# Usage: avahi-browse.sh CONF SERVICE-TYPE
# Run inside `ip netns exec NS unshare -m --propagation private`: gives the
# namespace a private /run, starts a private system dbus-daemon and an
# avahi-daemon (both in the foreground, killed on exit), then prints
# `avahi-browse -rpt SERVICE-TYPE`.
set -eu
conf=$1 type=$2
mount -t tmpfs tmpfs /run
mkdir -p /run/dbus /run/avahi-daemon
dbus-daemon --system --nofork --nopidfile &
dbus=$!
trap 'kill $dbus ${avahi:-} 2>/dev/null; wait' EXIT
i=0
until [ -S /run/dbus/system_bus_socket ]; do
	i=$((i+1)); [ $i -lt 100 ] || { echo "dbus-daemon did not start" >&2; exit 1; }
	sleep 0.02
done
avahi-daemon -f "$conf" --no-drop-root --no-chroot --no-rlimits &
avahi=$!
i=0
until avahi-browse -atp >/dev/null 2>&1; do
	i=$((i+1)); [ $i -lt 150 ] || { echo "avahi-daemon did not start" >&2; exit 1; }
	sleep 0.05
done
timeout 10 avahi-browse -rpt "$type"
