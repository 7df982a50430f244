{
  description = "nixrb-discover: Nix remote builders that configure themselves";

  # No flake.lock is committed yet (it cannot be produced offline): the
  # first `nix build` or `nix flake lock` writes one.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-unstable";

  outputs =
    { self, nixpkgs }:
    let
      systems = [
        "x86_64-linux"
        "aarch64-linux"
        "aarch64-darwin"
        "x86_64-darwin"
      ];
      forAll = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      packages = forAll (pkgs: rec {
        nixrb-discover = pkgs.callPackage ./nix/package.nix { };
        default = nixrb-discover;
      });

      # services.nixrb-discover.{advertise,client}; see docs/NIXOS.md.
      nixosModules.default = ./nix/module.nix;
      nixosModules.nixrb-discover = ./nix/module.nix;

      # services.nixrb-discover.client on macOS (nix-darwin); see README.md.
      darwinModules.default = ./nix/darwin-module.nix;
      darwinModules.nixrb-discover = ./nix/darwin-module.nix;

      overlays.default = final: prev: { nixrb-discover = final.callPackage ./nix/package.nix { }; };

      checks = forAll (pkgs: {
        package = self.packages.${pkgs.stdenv.hostPlatform.system}.default;
      });
    };
}
