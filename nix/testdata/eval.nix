# Evaluates nix/module.nix with the real nixpkgs module system (the
# vendored ./nixpkgs-lib) beside one platform's foreign option
# declarations, for nix/nixfiles_test.go.
#
#   nix-instantiate --eval --strict --json --expr '
#     let r = import ./testdata/eval.nix {
#       platform = ./testdata/nixos-options.nix;
#       nixVersion = "2.28.3";
#       user = { services.nixrb-discover.client.enable = true; };
#     }; in r.failedAssertions'
#
# platform: the foreign options (./nixos-options.nix; a nix-darwin twin
# can sit beside it). user: the machine's own configuration, a module
# (an attrset, or a function of { config, lib, ... }). The result is lazy:
# take what a test needs (config, options, failedAssertions, warnings,
# docs) so that only that is evaluated.
{
  platform,
  user ? { },
  nixVersion ? "2.28.3",
  # nix.package's pname: "nix", "lix", "determinate-nix".
  nixPname ? "nix",
  class ? "nixos",
  module ? ../module.nix,
}:
let
  lib = import ./nixpkgs-lib/lib;
  pkgs = import ./stub-pkgs.nix { inherit nixVersion nixPname; };
  eval = lib.evalModules {
    inherit class;
    modules = [
      platform
      module
      user
      { _module.args.pkgs = pkgs; }
    ];
  };
in
{
  inherit lib pkgs;
  inherit (eval) config options;
  # As the system build reports them (nixos/modules/system/activation/top-level.nix).
  failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) eval.config.assertions);
  inherit (eval.config) warnings;
  # Our options' documentation, as the NixOS manual renders it.
  docs = lib.filter (o: lib.take 2 o.loc == [ "services" "nixrb-discover" ]) (
    lib.optionAttrSetToDocList eval.options
  );
}
