# NixOS module: services.nixrb-discover.advertise (builders) and
# services.nixrb-discover.client (laptops, CI hosts). See docs/NIXOS.md.
#
# The services are the embedded unit files (systemd/*.service) read at
# evaluation time, so they carry exactly the same hardening; only
# ExecStart (the package and a generated JSON --config file) and PATH
# (nix.package) differ.
{
  config,
  lib,
  pkgs,
  utils,
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
  cfg = config.services.nixrb-discover;
  units = import ./units.nix;
  settings = import ./settings.nix;

  stateDir = "/var/lib/nixrb-discover";
  machinesFile = "${stateDir}/machines";
  sshConfigFile = "${stateDir}/ssh_config";

  # How the local Nix reads a port in a machines URI (the client's rule,
  # render.NixVersion.PortStyle): CppNix 2.31 as host:port, Lix 2.93 as
  # ?port=N. Any other Nix (older ones, or Determinate Nix, whose own
  # version number says nothing of the CppNix under it) gets the client's
  # ssh_config Host aliases, which root's ssh must include; the
  # conservative choice, since a missing alias file is fine for ssh.
  # CppNix has no 3.x: a "nix" 3.x (or any name with "determinate") is
  # Determinate Nix, whose package may carry either number.
  nixPackageName = config.nix.package.pname or "nix";
  isDeterminate = builtins.match ".*[Dd]eterminate.*" (config.nix.package.name or "") != null;
  readsPortInURI =
    if isDeterminate then
      false
    else if nixPackageName == "nix" then
      builtins.compareVersions config.nix.package.version "2.31" >= 0
      && builtins.compareVersions config.nix.package.version "3" < 0
    else if nixPackageName == "lix" then
      builtins.compareVersions config.nix.package.version "2.93" >= 0
    else
      false;
  needSSHConfig = !readsPortInURI;

  # NixOS rejects user and group names of 32 characters or more.
  userNameFits = builtins.stringLength cfg.advertise.sshUser < 32;

  enrollment = cfg.advertise.enrollment.allowTags != [ ] || cfg.advertise.enrollment.allowCaps != [ ];

  # A JSON --config file: its keys are the flag names.
  configFile = role: attrs: pkgs.writeText "nixrb-discover-${role}.json" (builtins.toJSON attrs);

  # A systemd service from the embedded unit file.
  service =
    unitFile: package: args:
    let
      u = units.parseFile (../systemd + "/${unitFile}");
      env = units.environment u.Service.Environment;
    in
    {
      description = u.Unit.Description;
      documentation = [ u.Unit.Documentation ];
      after = units.words u.Unit.After;
      wants = units.words u.Unit.Wants;
      wantedBy = units.words u.Install.WantedBy;
      # nix (the version, nix config show) is the system's.
      path = [ config.nix.package ];
      environment = removeAttrs env [ "PATH" ];
      serviceConfig = removeAttrs u.Service [
        "ExecStart"
        "Environment"
      ] // {
        ExecStart = utils.escapeSystemdExecArgs ([ "${package}/bin/nixrb-discover" ] ++ args);
      };
    };

  # Options shaped like nix.buildMachines, so that
  # `static = config.nix.buildMachines;` works unchanged.
  machineOptions = {
    # Options a newer nix.buildMachines may add are carried along, unused.
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
        description = "Base64 of the builder's SSH host key line (`base64 -w0 /etc/ssh/ssh_host_ed25519_key.pub`).";
      };
    };
  };

  mdnsOptions = role: {
    enable = mkEnableOption "mDNS (DNS-SD `_nix-builder._tcp`) ${role}";
    interfaces = mkOption {
      type = types.listOf types.str;
      default = [ ];
      example = [ "enp3s0" ];
      description = "Network interfaces for mDNS; it never picks interfaces by itself.";
    };
  };

  defaultPackage = pkgs.callPackage ./package.nix { };
  packageOption = mkOption {
    type = types.package;
    default = defaultPackage;
    defaultText = literalExpression "pkgs.callPackage ./nix/package.nix { }";
    description = "The nixrb-discover package.";
  };
in
{
  options.services.nixrb-discover = {
    advertise = {
      enable = mkEnableOption "the nixrb-discover builder agent: advertise this machine as a Nix remote builder";
      package = packageOption;
      sshUser = mkOption {
        type = types.str;
        default = "nixrb-builder";
        description = ''
          User Nix logs in as on this builder (`sshUser` in nix.buildMachines).
          Not `nix-ssh`: that is `nix.sshServe`'s user, with its own forced
          command.
        '';
      };
      sshPort = mkOption {
        type = types.port;
        default = if config.services.openssh.ports != [ ] then builtins.head config.services.openssh.ports else 22;
        defaultText = literalExpression "head config.services.openssh.ports";
        description = "Port sshd listens on.";
      };
      protocol = mkOption {
        type = types.enum [
          "ssh-ng"
          "ssh"
        ];
        default = "ssh-ng";
        description = "`ssh-ng` (nix-daemon --stdio) or `ssh` (nix-store --serve).";
      };
      systems = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        example = [
          "x86_64-linux"
          "i686-linux"
        ];
        description = "Systems to advertise; null: Nix's `system` and `extra-platforms`.";
      };
      supportedFeatures = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        example = [
          "kvm"
          "big-parallel"
        ];
        description = "Supported features; null: Nix's `system-features`.";
      };
      mandatoryFeatures = mkOption {
        type = types.nullOr (types.listOf types.str);
        default = null;
        description = "Features a build must require to come here; null: none.";
      };
      maxJobs = mkOption {
        type = types.nullOr types.ints.unsigned;
        default = null;
        description = "Builds at once; null: Nix's `max-jobs` (auto = cores).";
      };
      speedFactor = mkOption {
        type = types.nullOr types.numbers.positive;
        default = null;
        description = "Preference among builders, higher first; null: 1.";
      };
      hostName = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "ward.tail1234.ts.net";
        description = "Host name to advertise; null: the kernel host name.";
      };
      signKeyFile = mkOption {
        type = types.nullOr types.str;
        default = null;
        example = "/run/agenix/nixrb-fleet-key";
        description = ''
          Fleet private key (`nixrb-discover keygen`) to sign adverts with;
          mDNS clients accept only signed or pinned adverts. A string path
          outside the store: a Nix path literal would copy the secret into
          the world-readable store.
        '';
      };
      tailnet.enable = mkOption {
        type = types.bool;
        default = true;
        description = "Serve the advert on this node's tailnet addresses.";
      };
      mdns = mdnsOptions "advertising";
      advertPort = mkOption {
        type = types.port;
        default = 7461;
        description = "TCP port of `GET /v1/advert` on the tailnet.";
      };
      allowTags = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "tag:nix-client" ];
        description = "Serve the advert only to tailnet callers with one of these tags.";
      };
      allowCaps = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "Serve the advert only to tailnet callers granted one of these peer capabilities.";
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open `advertPort` on the tailnet interface and UDP 5353 on the mDNS interfaces.";
      };
      createUser = mkOption {
        type = types.bool;
        default = false;
        description = "Create `sshUser` as a system user with a login shell (Nix must be on its non-interactive PATH).";
      };
      trustedUser = mkOption {
        type = types.bool;
        default = false;
        description = ''
          Add `sshUser` to `nix.settings.trusted-users`. `ssh-ng` needs a
          trusted remote user for input-addressed derivations; a trusted user
          can also import unsigned store paths, so this is opt-in.
        '';
      };
      enrollment = {
        allowTags = mkOption {
          type = types.listOf types.str;
          default = [ ];
          example = [ "tag:nix-client" ];
          description = ''
            Accept SSH key enrolment (`POST /v1/enroll` on the tailnet) from
            callers with one of these tags. Non-empty (here or in `allowCaps`)
            turns enrolment on: sshd then asks `nixrb-discover authorized-keys`
            for `sshUser`'s keys.
          '';
        };
        allowCaps = mkOption {
          type = types.listOf types.str;
          default = [ ];
          description = "Accept enrolment from callers granted one of these peer capabilities.";
        };
        commandUser = mkOption {
          type = types.str;
          default = "root";
          description = ''
            sshd's `AuthorizedKeysCommandUser`: the user that runs
            `nixrb-discover authorized-keys`. It must be able to read the
            agent's enrolled keys under /var/lib/nixrb-discover.
          '';
        };
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "--log-level=debug" ];
        description = "More flags for `nixrb-discover advertise`; they win over the settings above.";
      };
    };

    client = {
      enable = mkEnableOption "the nixrb-discover client: keep Nix's builders to the ones that work";
      package = packageOption;
      tailnet.enable = mkOption {
        type = types.bool;
        default = true;
        description = "Discover builders among the tailnet's peers.";
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
        description = "SSH identity Nix and the checks use; created (0600, root) if absent.";
      };
      mdns = mdnsOptions "discovery";
      trustKeys = mkOption {
        type = types.listOf (types.either types.path types.str);
        default = [ ];
        example = literalExpression "[ ./fleet-key.pub ]";
        description = "Fleet public keys: mDNS adverts they signed are trusted.";
      };
      pins = mkOption {
        type = types.attrsOf types.str;
        default = { };
        example = {
          ward = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI...";
        };
        description = "mDNS builder name -> SSH host key line: trust that builder with that key.";
      };
      static = mkOption {
        type = types.listOf (types.submodule machineOptions);
        default = [ ];
        example = literalExpression "config.nix.buildMachines";
        description = ''
          Builders you maintain by hand, in `nix.buildMachines`' shape. They
          are always in the machines file; with `checkStatic` only while
          they pass the health check.
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
        description = ''
          How long a builder that fails its checks keeps its line in the
          machines file, with all its Nix build slots held so that Nix never
          connects to it (builds go to other builders, build locally where
          allowed, or wait for it), before it leaves the file.
        '';
      };
      nixStateDir = mkOption {
        type = types.str;
        default = "/nix/var/nix";
        description = ''
          The state directory of the Nix that reads the machines file (the
          daemon's): the client holds its build hook's slot locks in
          `current-load/` there.
        '';
      };
      openFirewall = mkOption {
        type = types.bool;
        default = false;
        description = "Open UDP 5353 on the mDNS interfaces.";
      };
      extraArgs = mkOption {
        type = types.listOf types.str;
        default = [ ];
        example = [ "--fall=2" ];
        description = "More flags for `nixrb-discover client`; they win over the settings above.";
      };
    };
  };

  config = mkMerge [
    (mkIf cfg.advertise.enable (mkMerge [
      {
        assertions = [
          {
            assertion = cfg.advertise.tailnet.enable || cfg.advertise.mdns.enable;
            message = "services.nixrb-discover.advertise: nothing to advertise on; keep tailnet.enable or set mdns.enable";
          }
          {
            assertion = !cfg.advertise.mdns.enable || cfg.advertise.mdns.interfaces != [ ];
            message = "services.nixrb-discover.advertise.mdns.enable needs mdns.interfaces";
          }
          {
            assertion = !cfg.advertise.createUser || userNameFits;
            message = "services.nixrb-discover.advertise.createUser: sshUser \"${cfg.advertise.sshUser}\" is ${toString (builtins.stringLength cfg.advertise.sshUser)} characters; NixOS user and group names have at most 31";
          }
        ];
        environment.systemPackages = [ cfg.advertise.package ];
        systemd.services.nixrb-discover-advertise = service "nixrb-discover-advertise.service" cfg.advertise.package (
          [
            "advertise"
            "--config"
            "${configFile "advertise" (settings.advertise cfg.advertise)}"
          ]
          ++ cfg.advertise.extraArgs
        );
      }
      # A name that does not fit is not defined at all: NixOS's own length
      # check aborts evaluation, hiding the assertion above.
      (mkIf (cfg.advertise.createUser && userNameFits) {
        users.users.${cfg.advertise.sshUser} = {
          isSystemUser = true;
          group = cfg.advertise.sshUser;
          useDefaultShell = true;
          description = "Nix remote builds (nixrb-discover)";
        };
        users.groups.${cfg.advertise.sshUser} = { };
      })
      (mkIf cfg.advertise.trustedUser {
        nix.settings.trusted-users = [ cfg.advertise.sshUser ];
      })
      (mkIf cfg.advertise.openFirewall {
        networking.firewall.interfaces = mkMerge (
          [
            (mkIf cfg.advertise.tailnet.enable {
              ${config.services.tailscale.interfaceName}.allowedTCPPorts = [ cfg.advertise.advertPort ];
            })
          ]
          ++ map (i: { ${i}.allowedUDPPorts = [ 5353 ]; }) (
            if cfg.advertise.mdns.enable then cfg.advertise.mdns.interfaces else [ ]
          )
        );
      })
      (mkIf enrollment {
        # sshd runs AuthorizedKeysCommand only if every directory on its
        # real path is root-owned and not group- or world-writable. The
        # store (/nix/store is 1775 root:nixbld) is not, and
        # /run/current-system/sw/bin resolves into it, so the command is a
        # copied file in /etc/ssh that execs the package.
        environment.etc."ssh/nixrb-discover-authorized-keys" = {
          mode = "0755";
          text = ''
            #!${pkgs.runtimeShell}
            exec ${cfg.advertise.package}/bin/nixrb-discover authorized-keys "$@"
          '';
        };
        # Each printed key carries `restrict` and a forced command that
        # allows only the Nix commands (see issue 7 / docs/NIXOS.md); the
        # Match block also shuts every other door for this user, whatever
        # key it logs in with.
        services.openssh.extraConfig = ''
          Match User ${cfg.advertise.sshUser}
            AuthorizedKeysCommand /etc/ssh/nixrb-discover-authorized-keys %u
            AuthorizedKeysCommandUser ${cfg.advertise.enrollment.commandUser}
            AllowAgentForwarding no
            AllowTcpForwarding no
            AllowStreamLocalForwarding no
            PermitTTY no
            PermitTunnel no
            X11Forwarding no
          Match All
        '';
      })
    ]))

    (mkIf cfg.client.enable (mkMerge [
      {
        assertions = [
          {
            assertion = cfg.client.tailnet.enable || cfg.client.mdns.enable || cfg.client.static != [ ];
            message = "services.nixrb-discover.client: no source of builders; keep tailnet.enable, set mdns.enable or static";
          }
          {
            assertion = !cfg.client.mdns.enable || cfg.client.mdns.interfaces != [ ];
            message = "services.nixrb-discover.client.mdns.enable needs mdns.interfaces";
          }
          {
            assertion = !cfg.client.mdns.enable || cfg.client.trustKeys != [ ] || cfg.client.pins != { };
            message = "services.nixrb-discover.client.mdns.enable needs trustKeys or pins: unsigned, unpinned mDNS adverts are never used";
          }
          {
            assertion = lib.hasInfix "@${machinesFile}" (toString (config.nix.settings.builders or ""));
            message = "services.nixrb-discover.client: nix.settings.builders must include @${machinesFile} (is nix.distributedBuilds false?)";
          }
        ];
        environment.systemPackages = [ cfg.client.package ];

        # Nix reads our file: never /etc/nix/machines, which NixOS makes a
        # store symlink that the client must not replace.
        nix.distributedBuilds = mkDefault true;
        nix.settings.builders = mkDefault "@${machinesFile}";
        # A second, unchecked list at the default path would be used by
        # anything that reads /etc/nix/machines; the static builders are
        # in our file (static = config.nix.buildMachines).
        environment.etc."nix/machines" = mkIf (config.nix.buildMachines != [ ]) { enable = mkDefault false; };
        # Nix creates current-load/ on its first remote build; the client
        # holds slot locks there from its start (the unit may write it).
        systemd.tmpfiles.rules = [ "d ${cfg.client.nixStateDir}/current-load 0755 root root -" ];

        systemd.services.nixrb-discover-client = service "nixrb-discover-client.service" cfg.client.package (
          [
            "client"
            "--config"
            "${configFile "client" (
              settings.client cfg.client {
                machines = machinesFile;
                staticFile =
                  if cfg.client.static == [ ] then
                    null
                  else
                    "${pkgs.writeText "nixrb-discover-static-machines" (settings.staticMachines cfg.client.static)}";
                sshConfig = if needSSHConfig then sshConfigFile else null;
              }
            )}"
          ]
          ++ cfg.client.extraArgs
        );
      }
      (mkIf needSSHConfig {
        # Host aliases for builders on a port other than 22 (for a Nix
        # that reads no port in a URI). A missing file is fine for ssh. The
        # Include must be top-level: after a user's `Host ward` line it
        # would apply only to ward. So it goes first (mkBefore), and
        # `Match all` makes it top-level wherever it lands.
        programs.ssh.extraConfig = lib.mkBefore ''
          Match all
          Include ${sshConfigFile}
        '';
      })
      (mkIf (cfg.client.openFirewall && cfg.client.mdns.enable) {
        networking.firewall.interfaces = mkMerge (map (i: { ${i}.allowedUDPPorts = [ 5353 ]; }) cfg.client.mdns.interfaces);
      })
    ]))
  ];
}
