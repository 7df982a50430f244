// Package launchd holds the launchd daemon plist of the client, for macOS
// installs without nix-darwin (nix-darwin's module builds the same job
// from nix/darwin-module.nix).
package launchd
