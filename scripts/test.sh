#!/usr/bin/env bash
# Runs the whole test suite, installing what the tests need first.
# Run as root on Debian (the tests start sshd, nix-daemon, network
# namespaces and tmpfs mounts): sudo ./scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

need=()
for pkg in nix-bin openssh-server openssh-client avahi-utils avahi-daemon dbus iproute2 debootstrap zstd tcpdump systemd; do
	dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || need+=("$pkg")
done
if [ "${#need[@]}" -gt 0 ]; then
	echo "test.sh: installing ${need[*]}"
	if [ "$(id -u)" -ne 0 ]; then
		echo "test.sh: error: must be root to install packages (sudo ./scripts/test.sh)" >&2
		exit 2
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	# Do not let package scripts start daemons on the host.
	printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
	apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
	rm -f /usr/sbin/policy-rc.d
fi

echo "test.sh: gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
	echo "test.sh: error: not gofmt'ed:" >&2
	echo "$unformatted" >&2
	exit 1
fi
echo "test.sh: go vet"
go vet ./...

# macOS laptops run the client (launchd, nix-darwin): the whole tree,
# tests included, must build and vet for darwin. Only a Mac can run it.
for arch in arm64 amd64; do
	echo "test.sh: go vet and go build for darwin/$arch"
	GOOS=darwin GOARCH=$arch go vet ./...
	GOOS=darwin GOARCH=$arch go build -o /dev/null ./cmd/...
done

if [ -d internal/nixtest ]; then
	echo "test.sh: preparing the Nix 2.26 (Debian trixie) chroot, cached after the first run"
	start=$(date +%s)
	go test -count=1 -timeout 15m -run '^TestPrepareTrixie$' ./internal/nixtest
	echo "test.sh: Nix 2.26 lane ready in $(( $(date +%s) - start ))s"
fi

if [ -d internal/headscaletest ]; then
	echo "test.sh: preparing headscale (built once from its Go module, cached under ~/.cache)"
	start=$(date +%s)
	go test -count=1 -timeout 20m -run '^TestPrepareHeadscale$' ./internal/headscaletest
	echo "test.sh: headscale lane ready in $(( $(date +%s) - start ))s"
fi

echo "test.sh: go test -race ./..."
go test -race -count=1 -timeout 45m ./...
