# Evaluates nix/darwin-module.nix with the real nixpkgs module system
# beside nix-darwin's declarations (./darwin-options.nix), for
# nix/darwin_test.go:
#
#   nix-instantiate --eval --strict --json --read-write-mode --expr '
#     (import ./testdata/darwin-eval.nix { lib = import NIXPKGS-LIB/lib;
#       user = { services.nixrb-discover.client.enable = true; }; }).out'
#
# Packages are derivation-shaped attrsets with fixed store paths (nothing
# is built); writeText is builtins.toFile, so a file the module writes is
# a real store file with its real text.
{
  lib,
  user,
  nixVersion ? "2.28.3",
}:
let
  pkg =
    name: extra:
    let
      self = {
        type = "derivation";
        inherit name;
        outPath = "/nix/store/00000000000000000000000000000000-${name}";
        outputs = [ "out" ];
        out = self;
      }
      // extra;
    in
    self;
  pkgs = {
    nix = pkg "nix-${nixVersion}" { version = nixVersion; };
    writeText = name: text: builtins.toFile name text;
    callPackage = _: _: pkg "nixrb-discover" { version = "0.1.0"; };
  };
  eval = lib.evalModules {
    class = "darwin";
    modules = [
      ./darwin-options.nix
      ../darwin-module.nix
      user
      { _module.args.pkgs = pkgs; }
    ];
  };
  c = eval.config;
  etcText = n: if c.environment.etc ? ${n} && c.environment.etc.${n}.enable then c.environment.etc.${n}.text else null;
in
{
  inherit eval;
  # What a test reads: as the system build would see it.
  out = {
    failedAssertions = map (a: a.message) (lib.filter (a: !a.assertion) c.assertions);
    inherit (c) warnings;
    plists = lib.mapAttrs (_: v: v.text) c.environment.launchDaemons;
    builders = if c.nix.enable then c.nix.settings.builders or null else null;
    distributedBuilds = if c.nix.enable then c.nix.distributedBuilds else null;
    etcMachines = etcText "nix/machines";
    nixCustomConf = etcText "nix/nix.custom.conf";
    sshConfig = c.programs.ssh.extraConfig;
    systemPackages = map (p: p.name) c.environment.systemPackages;
  };
}
