//go:build tools

// Package tools pins modules that the project's packages and tests use, so
// that `go mod tidy` keeps them while the code that uses them is written.
package tools

import (
	_ "github.com/coreos/go-systemd/v22/daemon"
	_ "github.com/fsnotify/fsnotify"
	_ "github.com/google/renameio/v2"
	_ "github.com/hashicorp/mdns"
	_ "github.com/miekg/dns"
	_ "github.com/peterbourgon/ff/v3/ffcli"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/rogpeppe/go-internal/testscript"
	_ "golang.org/x/crypto/ssh"
	_ "golang.org/x/sys/unix"
	_ "tailscale.com/client/local"
	_ "tailscale.com/ipn"
	_ "tailscale.com/net/netns"
	_ "tailscale.com/tailcfg"
	_ "tailscale.com/tsnet"
	_ "tailscale.com/tstest/integration"
	_ "tailscale.com/tstest/integration/testcontrol"
	_ "tailscale.com/types/logger"
)
