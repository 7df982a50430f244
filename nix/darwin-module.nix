# nix-darwin module: services.nixrb-discover.client on macOS laptops, with
# the NixOS module's option names (./module.nix). See README.md, "macOS".
#
# The job is the launchd daemon of launchd/org.nixrb-discover.client.plist
# (same label, keys and log file; nix/darwin_test.go compares them): only
# the program differs, the package with a generated JSON --config file,
# started once /nix (its own APFS volume) is mounted.
#
# Two kinds of Nix:
# - nix-darwin manages Nix (nix.enable = true, the default): the module
#   sets nix.settings.builders = "@/var/lib/nixrb-discover/machines" and
#   nix.distributedBuilds, as on NixOS.
# - Determinate Nix (nix.enable = false: Determinate's daemon owns
#   /etc/nix/nix.conf, which includes /etc/nix/nix.custom.conf): the
#   builders line goes to /etc/nix/nix.custom.conf, and nix.* is never
#   read (nix-darwin throws on nix.package, nix.buildMachines... then).
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkOption
    mkEnableOption
    mkIf
    mkMerge
    mkDefault
    types
    literalExpression
    ;
  cfg = config.services.nixrb-discover.client;
  settings = import ./settings.nix;

  label = "org.nixrb-discover.client";
  stateDir = "/var/lib/nixrb-discover";
  machinesFile = "${stateDir}/machines";
  sshConfigFile = "${stateDir}/ssh_config";
  logFile = "/var/log/nixrb-discover-client.log";
  managedNix = config.nix.enable;

  # How the local Nix reads a port in a machines URI, as in module.nix
  # (the client's rule, render.NixVersion.PortStyle): CppNix 2.31 as
  # host:port, Lix 2.93 as ?port=N; any other Nix gets the client's
  # ssh_config Host aliases, which root's ssh must include. Under
  # Determinate Nix (nix.enable = false, or a package named
  # *determinate*, or a "nix" 3.x) the CppNix under it is not known here:
  # keep the aliases.
  nixPackageName = config.nix.package.pname or "nix";
  isDeterminate = builtins.match ".*[Dd]eterminate.*" (config.nix.package.name or "") != null;
  readsPortInURI =
    if !managedNix || isDeterminate then
      false
    else if nixPackageName == "nix" then
      builtins.compareVersions config.nix.package.version "2.31" >= 0
      && builtins.compareVersions config.nix.package.version "3" < 0
    else if nixPackageName == "lix" then
      builtins.compareVersions config.nix.package.version "2.93" >= 0
    else
      false;
  needSSHConfig = !readsPortInURI;

  staticFile =
    if cfg.static == [ ] then null else "${pkgs.writeText "nixrb-discover-static-machines" (settings.staticMachines cfg.static)}";
  configFile = pkgs.writeText "nixrb-discover-client.json" (
    builtins.toJSON (
      settings.client cfg {
        machines = machinesFile;
        inherit staticFile;
        sshConfig = if needSSHConfig then sshConfigFile else null;
      }
    )
  );

  # The shape of nix.buildMachines, so `static = config.nix.buildMachines;`
  # works unchanged (as in ./module.nix).
  machineOptions = {
    freeformType = types.attrsOf types.anything;
    options = {
      hostName = mkOption {
        type = types.str;
        example = "ward.tail1234.ts.net";
        description = "Host name of the builder.";
      };
      protocol = mkOption {
        type = types.enum [
          null
          "ssh"
          "ssh-ng"
        ];
        default = "ssh";
        description = "`ssh-ng` (nix-daemon --stdio) or `ssh` (nix-store --serve).";
      };
      system = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "One system type; wins over `systems` when set.";
      };
      systems = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "System types the builder builds for.";
      };
      sshUser = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "User to log in as.";
      };
      sshKey = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "SSH private key (a path outside the store).";
      };
      maxJobs = mkOption {
        type = types.int;
        default = 1;
        description = "Builds at once.";
      };
      speedFactor = mkOption {
        type = types.numbers.positive;
        default = 1;
        description = "Preference among builders, higher first.";
      };
      mandatoryFeatures = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Features a build must require to go here.";
      };
      supportedFeatures = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Features the builder supports.";
      };
      publicHostKey = mkOption {
        type = types.nullOr types.str;
        default = null;
        description = "Base64 of the builder's SSH host key line.";
      };
    };
  };
in
{
  options.services.nixrb-discover.client = {
    enable = mkEnableOption "the nixrb-discover client: keep Nix's builders to the ones that work";
    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
      description = "The nixrb-discover package.";
    };
    tailnet.enable = mkOption {
      type = types.bool;
      default = true;
      description = ''
        Discover builders among the tailnet's peers. The client reaches
        the open-source tailscaled (/var/run/tailscaled.socket) or the
        standalone Tailscale app (/Library/Tailscale); the App Store app's
        LocalAPI answers only its own user, never a root daemon.
      '';
    };
    tags = mkOption {
      type = types.listOf types.str;
      default = [ "tag:nix-builder" ];
      description = "Tailnet tags that mark builders. An empty list means the client's default, `tag:nix-builder`.";
    };
    builders = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "ward" ];
      description = "MagicDNS names (short or full) of tailnet peers that are builders.";
    };
    address = mkOption {
      type = types.enum [
        "magicdns"
        "ip"
      ];
      default = "magicdns";
      description = "How the machines file names tailnet builders.";
    };
    sshKey = mkOption {
      type = types.str;
      default = "${stateDir}/id_ed25519";
      description = "SSH identity Nix and the checks use; created (0600, root) if absent. A plain file: no keychain.";
    };
    mdns = {
      enable = mkEnableOption "mDNS (DNS-SD `_nix-builder._tcp`) discovery, beside macOS's mDNSResponder on port 5353";
      interfaces = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "en0" ];
        description = "Network interfaces for mDNS; it never picks interfaces by itself.";
      };
    };
    trustKeys = mkOption {
      type = types.listOf (types.either types.path types.str);
      default = [ ];
      example = literalExpression "[ ./fleet-key.pub ]";
      description = "Fleet public keys: mDNS adverts they signed are trusted.";
    };
    pins = mkOption {
      type = types.attrsOf types.str;
      default = { };
      description = "mDNS builder name -> SSH host key line: trust that builder with that key.";
    };
    static = mkOption {
      type = types.listOf (types.submodule machineOptions);
      default = [ ];
      example = literalExpression "config.nix.buildMachines";
      description = ''
        Builders you maintain by hand, in `nix.buildMachines`' shape. They
        are always in the machines file; with `checkStatic` only while
        they pass the health check. (With `nix.enable = false`,
        nix.buildMachines cannot be read: list them here.)
      '';
    };
    checkStatic = mkOption {
      type = types.bool;
      default = false;
      description = "Health-gate the static builders too (they need `publicHostKey`).";
    };
    hold = mkOption {
      type = types.str;
      default = "10m";
      description = "How long a failing builder keeps its line, all its Nix slots held, before it leaves the file.";
    };
    nixStateDir = mkOption {
      type = types.str;
      default = "/nix/var/nix";
      description = ''
        The state directory of the Nix daemon that reads the machines file
        (the same on macOS, nix-darwin's and Determinate's): the client
        holds its build hook's slot locks in `current-load/` there.
      '';
    };
    openFirewall = mkOption {
      type = types.bool;
      default = false;
      description = "No effect on macOS: its application firewall asks per program, not per port (kept for the NixOS module's option names).";
    };
    extraArgs = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "--fall=2" ];
      description = "More flags for `nixrb-discover client`; they win over the settings above.";
    };
  };

  config = mkIf cfg.enable (mkMerge [
    {
      assertions = [
        {
          assertion = cfg.tailnet.enable || cfg.mdns.enable || cfg.static != [ ];
          message = "services.nixrb-discover.client: no source of builders; keep tailnet.enable, set mdns.enable or static";
        }
        {
          assertion = !cfg.mdns.enable || cfg.mdns.interfaces != [ ];
          message = "services.nixrb-discover.client.mdns.enable needs mdns.interfaces";
        }
        {
          assertion = !cfg.mdns.enable || cfg.trustKeys != [ ] || cfg.pins != { };
          message = "services.nixrb-discover.client.mdns.enable needs trustKeys or pins: unsigned, unpinned mDNS adverts are never used";
        }
        {
          assertion = !managedNix || lib.hasInfix "@${machinesFile}" (toString (config.nix.settings.builders or ""));
          message = "services.nixrb-discover.client: nix.settings.builders must include @${machinesFile} (is nix.distributedBuilds false?)";
        }
      ];
      warnings = lib.optional cfg.openFirewall "services.nixrb-discover.client.openFirewall has no effect on macOS";
      environment.systemPackages = [ cfg.package ];

      launchd.daemons.nixrb-discover-client = {
        # As nix-darwin's own `command` does: wait for /nix (its own APFS
        # volume, mounted after launchd starts). Nix creates current-load/
        # on its first remote build; the client holds slot locks there
        # from its start.
        serviceConfig.ProgramArguments = [
          "/bin/sh"
          "-c"
          (lib.concatStringsSep " && " [
            "/bin/wait4path /nix/store"
            "/bin/mkdir -p -m 0755 ${lib.escapeShellArg "${cfg.nixStateDir}/current-load"}"
            "exec ${
              lib.escapeShellArgs (
                [
                  "${cfg.package}/bin/nixrb-discover"
                  "client"
                  "--config"
                  "${configFile}"
                ]
                ++ cfg.extraArgs
              )
            }"
          ])
        ];
        # nix (the version, nix config show): the system's, or the
        # installer's default profile under Determinate Nix.
        path = [
          (if managedNix then config.nix.package else "/nix/var/nix/profiles/default/bin")
          "/usr/bin"
          "/bin"
          "/usr/sbin"
          "/sbin"
        ];
        # launchd gives daemons no HOME; nix wants one.
        environment.HOME = "/var/root";
        serviceConfig = {
          Label = label;
          UserName = "root";
          GroupName = "wheel";
          RunAtLoad = true;
          KeepAlive = true;
          ThrottleInterval = 5;
          ExitTimeOut = 15;
          Umask = 18; # 0022
          StandardOutPath = logFile;
          StandardErrorPath = logFile;
        };
      };
    }
    (mkIf managedNix {
      # Nix reads our file, never /etc/nix/machines (a store symlink that
      # nix-darwin's environment.etc owns and the client must not replace).
      nix.distributedBuilds = mkDefault true;
      nix.settings.builders = mkDefault "@${machinesFile}";
      # The static builders are in our file: no second, unchecked list.
      environment.etc."nix/machines" = mkIf (config.nix.buildMachines != [ ]) { enable = mkDefault false; };
    })
    (mkIf (!managedNix) {
      # Determinate Nix's /etc/nix/nix.conf includes this file.
      environment.etc."nix/nix.custom.conf".text = ''
        builders = @${machinesFile}
      '';
    })
    (mkIf needSSHConfig {
      programs.ssh.extraConfig = ''
        Include ${sshConfigFile}
      '';
    })
  ]);
}
