// Package nix holds no code: its tests check the Nix files of the
// flake and the NixOS module (parse, evaluate what needs no nixpkgs,
// compare with the embedded unit files, recompute vendorHash).
package nix
