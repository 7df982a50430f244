// Package nix holds no code: its tests check the Nix files of the
// flake and the NixOS module (parse, evaluate the module with the real
// nixpkgs module system vendored in testdata/nixpkgs-lib, compare with the
// embedded unit files, feed the generated config to the binary, recompute
// vendorHash).
package nix
