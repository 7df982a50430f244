# The NixOS options nix/module.nix reads or sets, declared as nixpkgs
# declares them (same types, defaults and merge behaviour), with the parts
# of nixpkgs' own config that change what our module produces. Each block
# names the nixpkgs file it mirrors (paths in NixOS/nixpkgs). Only what our
# module touches is here, plus what a user's configuration alongside it
# typically sets (nix.sshServe, users, ssh Host blocks, serviceConfig).
#
# Used by eval.nix (platform = ./nixos-options.nix). A nix-darwin twin
# would sit beside this file, declaring nix-darwin's options.
{
  config,
  lib,
  pkgs,
  ...
}:
let
  inherit (lib)
    mkOption
    mkIf
    mkMerge
    mkDefault
    mkAfter
    types
    literalExpression
    ;
in
{
  imports = [
    # nixos/modules/misc/assertions.nix
    {
      options.assertions = mkOption {
        type = types.listOf types.unspecified;
        internal = true;
        default = [ ];
        description = "Assertions: a failed one stops the system build with its message.";
      };
      options.warnings = mkOption {
        type = types.listOf types.str;
        internal = true;
        default = [ ];
        description = "Warnings printed when the system is built.";
      };
    }

    # nixos/modules/misc/extra-arguments.nix (_module.args.utils) with the
    # two functions of nixos/lib/utils.nix our module calls.
    {
      _module.args.utils = rec {
        escapeSystemdExecArg =
          arg:
          let
            s =
              if lib.isPath arg then
                "${arg}"
              else if lib.isString arg then
                arg
              else if lib.isInt arg || lib.isFloat arg || lib.isDerivation arg then
                toString arg
              else
                throw "escapeSystemdExecArg only allows strings, paths, numbers and derivations";
          in
          lib.replaceStrings [ "%" "$" ] [ "%%" "$$" ] (builtins.toJSON s);
        escapeSystemdExecArgs = lib.concatMapStringsSep " " escapeSystemdExecArg;
      };
    }

    # nixos/modules/config/system-path.nix
    {
      options.environment.systemPackages = mkOption {
        type = types.listOf types.package;
        default = [ ];
        description = "Packages installed in the system profile.";
      };
    }

    # nixos/modules/system/etc/etc.nix
    {
      options.environment.etc = mkOption {
        default = { };
        description = "Files in /etc.";
        type = types.attrsOf (
          types.submodule (
            {
              name,
              config,
              options,
              ...
            }:
            {
              options = {
                enable = mkOption {
                  type = types.bool;
                  default = true;
                  description = "Whether this /etc file should be generated.";
                };
                target = mkOption {
                  type = types.str;
                  description = "Name of the symlink (relative to /etc).";
                };
                text = mkOption {
                  type = types.nullOr types.lines;
                  default = null;
                  description = "Text of the file.";
                };
                source = mkOption {
                  type = types.path;
                  description = "Path of the source file.";
                };
                mode = mkOption {
                  type = types.str;
                  default = "symlink";
                  description = "If not `symlink`, the file is copied with this mode.";
                };
                uid = mkOption {
                  type = types.int;
                  default = 0;
                  description = "UID of a copied file.";
                };
                gid = mkOption {
                  type = types.int;
                  default = 0;
                  description = "GID of a copied file.";
                };
                user = mkOption {
                  type = types.str;
                  default = "+${toString config.uid}";
                  description = "Owner of a copied file.";
                };
                group = mkOption {
                  type = types.str;
                  default = "+${toString config.gid}";
                  description = "Group of a copied file.";
                };
              };
              config = {
                target = mkDefault name;
                source = mkIf (config.text != null) (
                  let
                    name' = "etc-" + lib.replaceStrings [ "/" ] [ "-" ] name;
                  in
                  lib.mkDerivedConfig options.text (pkgs.writeText name')
                );
              };
            }
          )
        );
      };
    }

    # nixos/modules/system/boot/systemd/tmpfiles.nix
    {
      options.systemd.tmpfiles.rules = mkOption {
        type = types.listOf types.str;
        default = [ ];
        description = "tmpfiles.d(5) rules.";
      };
    }

    # nixos/modules/system/boot/systemd.nix (systemd.services) with the
    # service options of nixos/lib/systemd-unit-options.nix and the
    # service config of nixos/lib/systemd-lib.nix (serviceConfig,
    # stage2ServiceConfig): `path` becomes environment.PATH, after NixOS's
    # default path (coreutils findutils gnugrep gnused systemd).
    (
      let
        unitNameType = types.strMatching "[a-zA-Z0-9@%:_.\\-]+[.](service|socket|device|mount|automount|swap|target|path|timer|scope|slice)";
        assertValueOneOf =
          name: values: group: attr:
          lib.optional (
            attr ? ${name} && !lib.elem attr.${name} values
          ) "Systemd ${group} field `${name}' cannot have value `${toString attr.${name}}'.";
        checkUnitConfig =
          group: checks: attrs:
          let
            defs = lib.mapAttrs (
              _: v:
              if v._type or "" == "override" then
                v.content
              else if v._type or "" == "if" then
                v.content
              else
                v
            ) attrs;
            errors = lib.concatMap (c: c group defs) checks;
          in
          if errors == [ ] then true else builtins.trace (lib.concatStringsSep "\n" errors) false;
        checkService = checkUnitConfig "Service" [
          (assertValueOneOf "Type" [
            "exec"
            "simple"
            "forking"
            "oneshot"
            "dbus"
            "notify"
            "notify-reload"
            "idle"
          ])
          (assertValueOneOf "Restart" [
            "no"
            "on-success"
            "on-failure"
            "on-abnormal"
            "on-abort"
            "always"
          ])
        ];
        unitOption = lib.mkOptionType {
          name = "systemd option";
          merge =
            loc: defs:
            let
              defs' = lib.filterOverrides defs;
            in
            if lib.isList (lib.head defs').value then
              lib.concatMap (
                def:
                if builtins.typeOf def.value == "list" then
                  def.value
                else
                  throw "The definitions for systemd unit options should be either all lists, representing repeatable options, or all non-lists, but for the option ${lib.showOption loc}, the definitions are a mix of list and non-list ${lib.options.showDefs defs'}"
              ) defs'
            else
              lib.mergeEqualOption loc defs';
        };
        units = description: mkOption {
          default = [ ];
          type = types.listOf unitNameType;
          inherit description;
        };
        serviceModule =
          { name, config, ... }:
          {
            options = {
              enable = mkOption {
                type = types.bool;
                default = true;
                description = "If false, the unit is a symlink to /dev/null.";
              };
              description = mkOption {
                type = types.singleLineStr;
                default = "";
                description = "Description of this unit.";
              };
              documentation = mkOption {
                type = types.listOf types.str;
                default = [ ];
                description = "URIs of documentation for this unit.";
              };
              requires = units "Units this unit requires.";
              wants = units "Units this unit wants.";
              after = units "Units this unit starts after.";
              before = units "Units this unit starts before.";
              wantedBy = units "Units that want this unit.";
              requiredBy = units "Units that require this unit.";
              unitConfig = mkOption {
                type = types.attrsOf unitOption;
                default = { };
                description = "The [Unit] section.";
              };
              environment = mkOption {
                type =
                  with types;
                  attrsOf (
                    nullOr (oneOf [
                      str
                      path
                      package
                    ])
                  );
                default = { };
                description = "Environment variables of the service's processes.";
              };
              path = mkOption {
                type =
                  with types;
                  listOf (oneOf [
                    package
                    str
                  ]);
                default = [ ];
                description = "Packages whose bin and sbin go on the service's PATH.";
              };
              serviceConfig = mkOption {
                type = types.addCheck (types.attrsOf unitOption) checkService;
                default = { };
                description = "The [Service] section.";
              };
              script = mkOption {
                type = types.lines;
                default = "";
                description = "Shell commands run as the service's main process.";
              };
              restartIfChanged = mkOption {
                type = types.bool;
                default = true;
                description = "Restart the service on a switch if its definition changed.";
              };
            };
            config = {
              environment.PATH = mkIf (
                config.path != [ ]
              ) "${lib.makeBinPath config.path}:${lib.makeSearchPathOutput "bin" "sbin" config.path}";
              path = mkAfter [
                pkgs.coreutils
                pkgs.findutils
                pkgs.gnugrep
                pkgs.gnused
                pkgs.systemd
              ];
            };
          };
      in
      {
        options.systemd.services = mkOption {
          default = { };
          type = types.attrsOf (types.submodule serviceModule);
          description = "Definition of systemd service units.";
        };
      }
    )

    # nixos/modules/config/users-groups.nix (and users.users.<name>.openssh
    # from nixos/modules/services/networking/ssh/sshd.nix). The name and
    # group length checks abort evaluation, as nixpkgs' do.
    (
      let
        cfg = config.users;
        userOpts =
          { name, config, ... }:
          {
            options = {
              enable = mkOption {
                type = types.bool;
                default = true;
                description = "If false, the account is not created.";
              };
              name = mkOption {
                type = types.passwdEntry types.str;
                apply =
                  x:
                  assert (
                    lib.stringLength x < 32 || abort "Username '${x}' is longer than 31 characters which is not allowed!"
                  );
                  x;
                description = "The name of the user account.";
              };
              description = mkOption {
                type = types.passwdEntry types.str;
                default = "";
                description = "GECOS field of the account.";
              };
              uid = mkOption {
                type = with types; nullOr int;
                default = null;
                description = "The account UID.";
              };
              isSystemUser = mkOption {
                type = types.bool;
                default = false;
                description = "A system user (UID below 1000).";
              };
              isNormalUser = mkOption {
                type = types.bool;
                default = false;
                description = "An account for a real user.";
              };
              group = mkOption {
                type = types.str;
                apply =
                  x:
                  assert (
                    lib.stringLength x < 32 || abort "Group name '${x}' is longer than 31 characters which is not allowed!"
                  );
                  x;
                default = "";
                description = "The user's primary group.";
              };
              extraGroups = mkOption {
                type = types.listOf types.str;
                default = [ ];
                description = "The user's auxiliary groups.";
              };
              home = mkOption {
                type = types.passwdEntry types.path;
                default = "/var/empty";
                description = "The user's home directory.";
              };
              shell = mkOption {
                type = types.nullOr (types.either types.shellPackage (types.passwdEntry types.path));
                default = pkgs.shadow;
                defaultText = literalExpression "pkgs.shadow";
                description = "The user's shell.";
              };
              useDefaultShell = mkOption {
                type = types.bool;
                default = false;
                description = "Use users.defaultUserShell.";
              };
              createHome = mkOption {
                type = types.bool;
                default = false;
                description = "Create the home directory.";
              };
              hashedPassword = mkOption {
                type = with types; nullOr (passwdEntry str);
                default = null;
                description = "Hashed password.";
              };
              openssh.authorizedKeys = {
                keys = mkOption {
                  type = types.listOf types.singleLineStr;
                  default = [ ];
                  description = "Public keys that may log in as this user.";
                };
                keyFiles = mkOption {
                  type = types.listOf types.path;
                  default = [ ];
                  description = "Files of public keys that may log in as this user.";
                };
              };
            };
            config = mkMerge [
              {
                name = mkDefault name;
                shell = mkIf config.useDefaultShell (mkDefault cfg.defaultUserShell);
              }
              (mkIf config.isNormalUser {
                group = mkDefault "users";
                createHome = mkDefault true;
                home = mkDefault "/home/${config.name}";
                useDefaultShell = mkDefault true;
                isSystemUser = mkDefault false;
              })
            ];
          };
        groupOpts =
          { name, ... }:
          {
            options = {
              name = mkOption {
                type = types.passwdEntry types.str;
                description = "The name of the group.";
              };
              gid = mkOption {
                type = with types; nullOr int;
                default = null;
                description = "The group GID.";
              };
              members = mkOption {
                type = with types; listOf (passwdEntry str);
                default = [ ];
                description = "Members of the group.";
              };
            };
            config.name = mkDefault name;
          };
        groupNames = lib.mapAttrsToList (n: g: g.name) cfg.groups;
        usersWithoutExistingGroup = lib.filterAttrs (n: u: u.group != "" && !lib.elem u.group groupNames) cfg.users;
      in
      {
        options.users = {
          users = mkOption {
            default = { };
            type = types.attrsOf (types.submodule userOpts);
            description = "User accounts.";
          };
          groups = mkOption {
            default = { };
            type = types.attrsOf (types.submodule groupOpts);
            description = "Groups.";
          };
          defaultUserShell = mkOption {
            type = types.either types.path types.shellPackage;
            default = pkgs.bashInteractive;
            defaultText = literalExpression "pkgs.bashInteractive";
            description = "The shell of users with useDefaultShell.";
          };
        };
        config = {
          users.users = {
            root = {
              uid = 0;
              description = "System administrator";
              home = "/root";
              shell = mkDefault cfg.defaultUserShell;
              group = "root";
            };
            nobody = {
              uid = 65534;
              isSystemUser = true;
              description = "Unprivileged account (don't use!)";
              group = "nogroup";
            };
          };
          users.groups = {
            root.gid = 0;
            wheel.gid = 1;
            nogroup.gid = 65534;
            users.gid = 100;
            nixbld.gid = 30000;
          };
          assertions = [
            {
              assertion = usersWithoutExistingGroup == { };
              message =
                let
                  errUsers = lib.attrNames usersWithoutExistingGroup;
                  missingGroups = lib.unique (lib.mapAttrsToList (n: u: u.group) usersWithoutExistingGroup);
                  mkConfigHint = group: "users.groups.${group} = {};";
                in
                ''
                  The following users have a primary group that is undefined: ${lib.concatStringsSep " " errUsers}
                  Hint: Add this to your NixOS configuration:
                    ${lib.concatStringsSep "\n  " (map mkConfigHint missingGroups)}
                '';
            }
          ]
          ++ lib.flatten (
            lib.mapAttrsToList (
              name: user:
              let
                nameRegex = "[a-zA-Z0-9_.][a-zA-Z0-9_.-]*";
                isEffectivelySystemUser = user.isSystemUser || (user.uid != null && user.uid < 1000 && !user.isNormalUser);
              in
              [
                {
                  assertion = builtins.match nameRegex user.name != null;
                  message = "The username \"${user.name}\" is not valid, it does not match the regex \"${nameRegex}\".";
                }
                {
                  assertion = lib.xor isEffectivelySystemUser user.isNormalUser;
                  message = ''
                    Exactly one of users.users.${user.name}.isSystemUser and users.users.${user.name}.isNormalUser must be set.
                  '';
                }
                {
                  assertion = user.group != "";
                  message = ''
                    users.users.${user.name}.group is unset. This used to default to
                    nogroup, but this is unsafe. For example you can create a group
                    for this user with:
                    users.users.${user.name}.group = "${user.name}";
                    users.groups.${user.name} = {};
                  '';
                }
              ]
            ) cfg.users
          );
        };
      }
    )

    # nixos/modules/services/networking/ssh/sshd.nix (what we touch; the
    # generated sshd_config ends with extraConfig).
    {
      options.services.openssh = {
        enable = mkOption {
          type = types.bool;
          default = false;
          description = "Whether to enable the OpenSSH daemon.";
        };
        ports = mkOption {
          type = types.listOf types.port;
          default = [ 22 ];
          description = "Ports sshd listens on.";
        };
        extraConfig = mkOption {
          type = types.lines;
          default = "";
          description = "Verbatim contents of sshd_config, after the generated settings.";
        };
      };
    }

    # nixos/modules/programs/ssh.nix: extraConfig is prepended to
    # /etc/ssh/ssh_config, before the generated `Host *` block.
    {
      options.programs.ssh.extraConfig = mkOption {
        type = types.lines;
        default = "";
        description = "Extra configuration text prepended to ssh_config.";
      };
      config.environment.etc."ssh/ssh_config".text = ''
        # Custom options from `extraConfig`, to override generated options
        ${config.programs.ssh.extraConfig}

        # Generated options from other settings
        Host *
        GlobalKnownHostsFile /etc/ssh/ssh_known_hosts
      '';
    }

    # nixos/modules/services/networking/tailscale.nix
    {
      options.services.tailscale = {
        enable = mkOption {
          type = types.bool;
          default = false;
          description = "Whether to enable Tailscale client daemon.";
        };
        interfaceName = mkOption {
          type = types.str;
          default = "tailscale0";
          description = "The interface name for tunnel traffic.";
        };
      };
    }

    # nixos/modules/services/networking/firewall.nix
    (
      let
        canonicalizePortList = ports: lib.unique (builtins.sort builtins.lessThan ports);
        portOptions = {
          allowedTCPPorts = mkOption {
            type = types.listOf types.port;
            default = [ ];
            apply = canonicalizePortList;
            description = "TCP ports open in the firewall.";
          };
          allowedTCPPortRanges = mkOption {
            type = types.listOf (types.attrsOf types.port);
            default = [ ];
            description = "TCP port ranges open in the firewall.";
          };
          allowedUDPPorts = mkOption {
            type = types.listOf types.port;
            default = [ ];
            apply = canonicalizePortList;
            description = "UDP ports open in the firewall.";
          };
          allowedUDPPortRanges = mkOption {
            type = types.listOf (types.attrsOf types.port);
            default = [ ];
            description = "UDP port ranges open in the firewall.";
          };
        };
      in
      {
        options.networking.firewall = portOptions // {
          interfaces = mkOption {
            default = { };
            type = types.attrsOf (types.submodule { options = portOptions; });
            description = "Interface-specific open ports.";
          };
        };
      }
    )

    # nixos/modules/services/system/nix-daemon.nix (nix.enable,
    # nix.package) and nixos/modules/config/nix.nix (nix.settings: a
    # freeform submodule; NixOS always trusts root).
    (
      let
        semanticConfType =
          with types;
          let
            confAtom =
              nullOr (oneOf [
                bool
                int
                float
                str
                path
                package
              ])
              // {
                description = "Nix config atom (null, bool, int, float, str, path or package)";
              };
          in
          attrsOf (either confAtom (listOf confAtom));
      in
      {
        options.nix = {
          enable = mkOption {
            type = types.bool;
            default = true;
            description = "Whether to enable Nix.";
          };
          package = mkOption {
            type = types.package;
            default = pkgs.nix;
            defaultText = literalExpression "pkgs.nix";
            description = "The Nix package.";
          };
          settings = mkOption {
            default = { };
            description = "nix.conf settings.";
            type = types.submodule {
              freeformType = semanticConfType;
              options = {
                max-jobs = mkOption {
                  type = types.either types.int (types.enum [ "auto" ]);
                  default = "auto";
                  description = "Builds at once.";
                };
                substituters = mkOption {
                  type = types.listOf types.str;
                  description = "Binary caches.";
                };
                trusted-public-keys = mkOption {
                  type = types.listOf types.str;
                  description = "Keys binary caches are signed with.";
                };
                trusted-users = mkOption {
                  type = types.listOf types.str;
                  description = "Users with additional rights on the Nix daemon.";
                };
                system-features = mkOption {
                  type = types.listOf types.str;
                  description = "Features this machine supports.";
                };
                allowed-users = mkOption {
                  type = types.listOf types.str;
                  default = [ "*" ];
                  description = "Users allowed to connect to the Nix daemon.";
                };
              };
            };
          };
        };
        config = mkIf config.nix.enable {
          nix.settings = {
            trusted-public-keys = [ "cache.nixos.org-1:6NCHdD59X431o0gWypbMrAURkbJ16ZPMQFGspcDShjY=" ];
            trusted-users = [ "root" ];
            substituters = mkAfter [ "https://cache.nixos.org/" ];
            system-features = mkDefault [
              "nixos-test"
              "benchmark"
              "big-parallel"
              "kvm"
            ];
          };
        };
      }
    )

    # nixos/modules/config/nix-remote-build.nix: nix.buildMachines,
    # nix.distributedBuilds, the /etc/nix/machines generator, the
    # system-type assertion, and builders = null without distributedBuilds.
    (
      let
        cfg = config.nix;
        isNixAtLeast = lib.versionAtLeast (lib.getVersion cfg.package.out);
        buildMachinesText = lib.concatMapStrings (
          machine:
          (lib.concatStringsSep " " (
            [
              "${lib.optionalString (machine.protocol != null) "${machine.protocol}://"}${
                lib.optionalString (machine.sshUser != null) "${machine.sshUser}@"
              }${machine.hostName}"
              (
                if machine.system != null then
                  machine.system
                else if machine.systems != [ ] then
                  lib.concatStringsSep "," machine.systems
                else
                  "-"
              )
              (if machine.sshKey != null then machine.sshKey else "-")
              (toString machine.maxJobs)
              (toString machine.speedFactor)
              (
                let
                  res = machine.supportedFeatures ++ machine.mandatoryFeatures;
                in
                if res == [ ] then "-" else lib.concatStringsSep "," res
              )
              (
                let
                  res = machine.mandatoryFeatures;
                in
                if res == [ ] then "-" else lib.concatStringsSep "," machine.mandatoryFeatures
              )
            ]
            ++ lib.optional (isNixAtLeast "2.4pre") (if machine.publicHostKey != null then machine.publicHostKey else "-")
          ))
          + "\n"
        ) cfg.buildMachines;
        badMachine = m: m.system == null && m.systems == [ ];
      in
      {
        options.nix = {
          buildMachines = mkOption {
            default = [ ];
            description = "Machines for distributed builds.";
            type = types.listOf (
              types.submodule {
                options = {
                  hostName = mkOption {
                    type = types.str;
                    description = "The hostname of the build machine.";
                  };
                  protocol = mkOption {
                    type = types.enum [
                      null
                      "ssh"
                      "ssh-ng"
                    ];
                    default = "ssh";
                    description = "The protocol to the build machine.";
                  };
                  system = mkOption {
                    type = types.nullOr types.str;
                    default = null;
                    description = "The system type of the build machine.";
                  };
                  systems = mkOption {
                    type = types.listOf types.str;
                    default = [ ];
                    description = "The system types of the build machine.";
                  };
                  sshUser = mkOption {
                    type = types.nullOr types.str;
                    default = null;
                    description = "The user to log in as.";
                  };
                  sshKey = mkOption {
                    type = types.nullOr types.str;
                    default = null;
                    description = "The SSH private key to log in with.";
                  };
                  maxJobs = mkOption {
                    type = types.int;
                    default = 1;
                    description = "Concurrent jobs.";
                  };
                  speedFactor = mkOption {
                    type = types.numbers.positive;
                    default = 1;
                    description = "Relative speed.";
                  };
                  mandatoryFeatures = mkOption {
                    type = types.listOf types.str;
                    default = [ ];
                    description = "Mandatory features.";
                  };
                  supportedFeatures = mkOption {
                    type = types.listOf types.str;
                    default = [ ];
                    description = "Supported features.";
                  };
                  publicHostKey = mkOption {
                    type = types.nullOr types.str;
                    default = null;
                    description = "Base64 of the builder's public host key.";
                  };
                };
              }
            );
          };
          distributedBuilds = mkOption {
            type = types.bool;
            default = false;
            description = "Whether to distribute builds to nix.buildMachines.";
          };
        };
        config = mkIf cfg.enable {
          assertions = [
            {
              assertion = !(lib.any badMachine cfg.buildMachines);
              message = ''
                At least one system type (via <varname>system</varname> or
                  <varname>systems</varname>) must be set for every build machine.
                  Invalid machine specifications:
              ''
              + "      "
              + (lib.concatStringsSep "\n      " (map (m: m.hostName) (lib.filter badMachine cfg.buildMachines)));
            }
          ];
          environment.etc."nix/machines" = mkIf (cfg.buildMachines != [ ]) { text = buildMachinesText; };
          nix.settings = mkIf (!cfg.distributedBuilds) { builders = null; };
        };
      }
    )

    # nixos/modules/services/misc/nix-ssh-serve.nix
    (
      let
        cfg = config.nix.sshServe;
        command = if cfg.protocol == "ssh" then "nix-store --serve ${lib.optionalString cfg.write "--write"}" else "nix-daemon --stdio";
      in
      {
        options.nix.sshServe = {
          enable = mkOption {
            type = types.bool;
            default = false;
            description = "Whether to serve the Nix store as a remote store via SSH.";
          };
          write = mkOption {
            type = types.bool;
            default = false;
            description = "Whether to allow writing to the store via SSH.";
          };
          keys = mkOption {
            type = types.listOf types.str;
            default = [ ];
            description = "SSH public keys allowed to access the store.";
          };
          protocol = mkOption {
            type = types.enum [
              "ssh"
              "ssh-ng"
            ];
            default = "ssh";
            description = "The Nix-over-SSH protocol.";
          };
        };
        config = mkIf cfg.enable {
          users.users.nix-ssh = {
            description = "Nix SSH store user";
            isSystemUser = true;
            group = "nix-ssh";
            useDefaultShell = true;
          };
          users.groups.nix-ssh = { };
          services.openssh.enable = true;
          services.openssh.extraConfig = ''
            Match User nix-ssh
              AllowAgentForwarding no
              AllowTcpForwarding no
              PermitTTY no
              PermitTunnel no
              X11Forwarding no
              ForceCommand ${config.nix.package.out}/bin/${command}
            Match All
          '';
          users.users.nix-ssh.openssh.authorizedKeys.keys = cfg.keys;
        };
      }
    )
  ];
}
