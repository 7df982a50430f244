# nix-darwin's own declarations of what nix/darwin-module.nix touches, for
# nix/darwin_test.go: there is no nix-darwin here. Each is typed as
# nix-darwin declares it (modules/launchd/default.nix and launchd.nix,
# modules/nix/default.nix, modules/system/etc.nix and lib/write-text.nix,
# modules/programs/ssh, modules/misc/assertions.nix), trimmed to the keys
# we use; the config part is nix-darwin's behaviour that meets ours:
# launchd.daemons become plists (generators.toPlist, as nix-darwin writes
# them to /Library/LaunchDaemons), the nix.* options throw when
# nix.enable is off, builders = null without distributedBuilds, and
# nix.buildMachines becomes /etc/nix/machines.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib) mkOption types mkIf mkDefault;
  cfg = config.nix;

  # modules/nix/default.nix: reading a nix.* option when Nix is not
  # managed is an error.
  managedDefault = name: default: {
    default =
      if cfg.enable then
        default
      else
        throw "${name}: accessed when `nix.enable` is off; this is a bug in nix-darwin or a third-party module";
  };

  semanticConfType =
    let
      confAtom = types.nullOr (
        types.oneOf [
          types.bool
          types.int
          types.float
          types.str
          types.path
          types.package
        ]
      );
    in
    types.attrsOf (types.either confAtom (types.listOf confAtom));

  nullOr = t: mkOption {
    type = types.nullOr t;
    default = null;
  };

  # modules/launchd/launchd.nix (the keys our job uses).
  launchdConfig = {
    options = {
      Label = mkOption { type = types.str; };
      Program = nullOr types.path;
      ProgramArguments = nullOr (types.listOf types.str);
      UserName = nullOr types.str;
      GroupName = nullOr types.str;
      KeepAlive = nullOr (types.either types.bool (types.attrsOf types.bool));
      RunAtLoad = nullOr types.bool;
      EnvironmentVariables = nullOr (types.attrsOf types.str);
      Umask = nullOr types.int;
      ExitTimeOut = nullOr types.int;
      ThrottleInterval = nullOr types.int;
      StandardOutPath = nullOr types.path;
      StandardErrorPath = nullOr types.path;
    };
  };

  makeDrvBinPath = ps: lib.concatMapStringsSep ":" (p: if lib.isDerivation p then "${p}/bin" else p) ps;

  # modules/launchd/default.nix
  serviceOptions =
    { config, name, ... }:
    let
      env = config.environment // lib.optionalAttrs (config.path != "") { PATH = config.path; };
    in
    {
      options = {
        environment = mkOption {
          type = types.attrsOf (types.either types.str (types.listOf types.str));
          default = { };
          apply = lib.mapAttrs (n: v: if lib.isList v then lib.concatStringsSep ":" v else v);
        };
        path = mkOption {
          type = types.listOf (types.either types.path types.str);
          default = [ ];
          apply = ps: if lib.isList ps then (makeDrvBinPath ps) else ps;
        };
        command = mkOption {
          type = types.either types.str types.path;
          default = "";
        };
        serviceConfig = mkOption {
          type = types.submodule launchdConfig;
          default = { };
        };
      };
      config = {
        serviceConfig.Label = mkDefault "org.nixos.${name}"; # launchd.labelPrefix's default
        serviceConfig.ProgramArguments = mkIf (config.command != "") [
          "/bin/sh"
          "-c"
          "/bin/wait4path /nix/store && exec ${config.command}"
        ];
        serviceConfig.EnvironmentVariables = mkIf (env != { }) env;
      };
    };

  # modules/lib/write-text.nix (environment.etc entries)
  etcEntry =
    { name, config, ... }:
    {
      options = {
        enable = mkOption {
          type = types.bool;
          default = true;
        };
        target = mkOption {
          type = types.str;
          default = name;
        };
        text = mkOption {
          type = types.nullOr types.lines;
          default = null;
        };
        source = mkOption { type = types.path; };
        knownSha256Hashes = mkOption {
          type = types.listOf types.str;
          default = [ ];
        };
      };
      config.source = mkIf (config.text != null) (mkDefault (pkgs.writeText (baseNameOf name) config.text));
    };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf types.unspecified;
      default = [ ];
      internal = true;
    };
    warnings = mkOption {
      type = types.listOf types.str;
      default = [ ];
      internal = true;
    };
    environment.systemPackages = mkOption {
      type = types.listOf types.package;
      default = [ ];
    };
    environment.etc = mkOption {
      type = types.attrsOf (types.submodule etcEntry);
      default = { };
    };
    environment.launchDaemons = mkOption {
      type = types.attrsOf (types.submodule etcEntry);
      default = { };
    };
    launchd.daemons = mkOption {
      type = types.attrsOf (types.submodule serviceOptions);
      default = { };
    };
    programs.ssh.extraConfig = mkOption {
      type = types.lines;
      default = "";
    };
    nix = {
      enable = mkOption {
        type = types.bool;
        default = true;
      };
      package = mkOption {
        type = types.package;
        inherit (managedDefault "nix.package" pkgs.nix) default;
      };
      distributedBuilds = mkOption {
        type = types.bool;
        inherit (managedDefault "nix.distributedBuilds" false) default;
      };
      buildMachines = mkOption {
        type = types.listOf (types.attrsOf types.anything);
        inherit (managedDefault "nix.buildMachines" [ ]) default;
      };
      settings = mkOption {
        type = types.submodule { freeformType = semanticConfType; };
        inherit (managedDefault "nix.settings" { }) default;
      };
    };
  };

  config = lib.mkMerge [
    {
      environment.launchDaemons = lib.mapAttrs' (
        name: value:
        lib.nameValuePair "${value.serviceConfig.Label}.plist" { text = lib.generators.toPlist { escape = true; } value.serviceConfig; }
      ) config.launchd.daemons;
    }
    (mkIf cfg.enable {
      nix.settings = mkIf (!cfg.distributedBuilds) { builders = null; };
      environment.etc."nix/machines" = mkIf (cfg.buildMachines != [ ]) {
        text = lib.concatMapStrings (m: "${m.hostName} ${m.system or "-"}\n") cfg.buildMachines;
      };
    })
  ];
}
