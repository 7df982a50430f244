# The few packages and builders nix/module.nix and nixos-options.nix use,
# for eval.nix: there is no nixpkgs here. Packages are derivation-shaped
# attrsets with fixed store paths (nothing is built); writeText is
# builtins.toFile, so a file the module writes is a real store file with
# its real text.
{
  nixVersion,
  nixPname ? "nix",
}:
let
  fake =
    name: extra:
    {
      type = "derivation";
      inherit name;
      outPath = "/nix/store/00000000000000000000000000000000-${name}";
      outputs = [ "out" ];
    }
    // extra;
  pkg =
    name: extra:
    let
      self = fake name (extra // { out = self; });
    in
    self;
in
{
  nix = pkg "${nixPname}-${nixVersion}" {
    pname = nixPname;
    version = nixVersion;
  };
  coreutils = pkg "coreutils-9.5" { };
  findutils = pkg "findutils-4.10.0" { };
  gnugrep = pkg "gnugrep-3.11" { };
  gnused = pkg "gnused-4.9" { };
  systemd = pkg "systemd-257" { };
  shadow = pkg "shadow-4.16.0" { shellPath = "/bin/nologin"; };
  bashInteractive = pkg "bash-interactive-5.2" { shellPath = "/bin/bash"; };
  runtimeShell = "/nix/store/00000000000000000000000000000000-bash-5.2/bin/sh";
  writeText = name: text: builtins.toFile name text;
  # nix/module.nix's default package: pkgs.callPackage ./package.nix { }.
  callPackage = _: _: pkg "nixrb-discover" { version = "0.1.0"; };
}
