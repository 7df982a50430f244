#!/usr/bin/env bash
# Puts this machine back into the state of a fresh CI machine for every
# piece of machine state we know the tests touch, says what it changed,
# then runs `bash .ci/run` from a fresh clone of this repository's HEAD.
# A test that depends on something an earlier test, package or run left
# behind fails here, as it would on CI's next machine.
#
#   sudo ./scripts/fresh-check.sh                # everything fresh (~16 min on 2 cores)
#   sudo ./scripts/fresh-check.sh --keep-chroot  # keep the cached Nix 2.26 (trixie) tarball and headscale binary
#   sudo ./scripts/fresh-check.sh --dry-run      # say what it would change, change nothing
#
# What "fresh" means (a Debian machine after `apt-get install nix-bin
# openssh-server` with daemons blocked, as CI installs them):
#   - no /run/sshd (openssh-server's tmpfiles rule never ran)
#   - /nix/store is 0755 root:root (nix-bin makes no 1775 root:nixbld store)
#   - no nixbld group and no nixbld build users (nix-setup-systemd makes those)
#   - no users the tests create (nixrbhealth, nixtest, nix-ssh, nix-builder)
#   - no cached trixie chroot nor headscale binary (~/.cache/nixrb-discover) unless --keep-chroot
# The Go module and build caches are kept: they hold no machine state a
# test may rely on, only time.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

keep_chroot=0
dry=0
while [ $# -gt 0 ]; do
	case "$1" in
	--keep-chroot) keep_chroot=1 ;;
	--dry-run) dry=1 ;;
	-h|--help) sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
	*) echo "fresh-check.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
	esac
	shift
done
if [ "$(id -u)" -ne 0 ]; then
	echo "fresh-check.sh: error: run as root (sudo ./scripts/fresh-check.sh): it changes users, groups and /run" >&2
	exit 2
fi

changed=0
do_change() { # description, command...
	local what=$1
	shift
	changed=$((changed + 1))
	if [ "$dry" = 1 ]; then
		echo "fresh-check.sh: would $what"
	else
		echo "fresh-check.sh: $what"
		"$@"
	fi
}

if [ -e /run/sshd ]; then
	do_change "remove /run/sshd (sshd's privilege separation directory)" rm -rf /run/sshd
fi
if [ -d /nix/store ]; then
	mode=$(stat -c '%a %U:%G' /nix/store)
	if [ "$mode" != "755 root:root" ]; then
		do_change "reset /nix/store from $mode to 755 root:root" sh -c 'chown root:root /nix/store && chmod 0755 /nix/store'
	fi
fi
for u in $(getent passwd | awk -F: '$1 ~ /^nixbld[0-9]+$/ {print $1}') nixrbhealth nixtest nix-ssh nix-builder; do
	if getent passwd "$u" >/dev/null; then
		uid=$(getent passwd "$u" | cut -d: -f3)
		if [ "$uid" -ge 100 ]; then
			do_change "remove user $u (uid $uid)" userdel -r "$u" 2>/dev/null || userdel "$u"
		fi
	fi
done
if getent group nixbld >/dev/null; then
	do_change "remove group nixbld" groupdel nixbld
fi
cache="${XDG_CACHE_HOME:-$HOME/.cache}/nixrb-discover"
if [ "$keep_chroot" = 0 ] && [ -d "$cache" ] && [ -n "$(ls -A "$cache")" ]; then
	do_change "remove the cached trixie chroot and headscale binary in $cache ($(du -sh "$cache" | cut -f1))" rm -rf "$cache"
fi
echo "fresh-check.sh: $changed change(s)"
[ "$dry" = 1 ] && exit 0

if [ -n "$(git status --porcelain --untracked-files=no)" ]; then
	echo "fresh-check.sh: warning: uncommitted changes are not in the clone; this checks HEAD ($(git rev-parse --short HEAD))" >&2
fi
clone=$(mktemp -d /tmp/nixrb-fresh-check.XXXXXX)
trap 'rm -rf "$clone"' EXIT
git clone -q --no-hardlinks "$(pwd)" "$clone/repo"
echo "fresh-check.sh: running .ci/run in a fresh clone of $(git rev-parse --short HEAD) ($clone/repo)"
start=$(date +%s)
rc=0
(cd "$clone/repo" && bash .ci/run) || rc=$?
echo "fresh-check.sh: .ci/run exited $rc after $(( $(date +%s) - start ))s"
exit "$rc"
