# What nix/nixfiles_test.go looks at in a NixOS evaluation (eval.nix's
# result r): our services, the NixOS settings our module changes, users,
# sshd and ssh lines, /etc files, firewall, assertions. JSON-safe.
r:
let
  inherit (r) lib config;
  etcNames = [
    "nix/machines"
    "ssh/ssh_config"
    "ssh/nixrb-discover-authorized-keys"
  ];
in
{
  inherit (r) failedAssertions warnings;
  config = {
    environment.etc = lib.mapAttrs (n: e: {
      inherit (e) enable mode text;
      source = toString e.source;
    }) (lib.filterAttrs (n: _: lib.elem n etcNames) config.environment.etc);
    environment.systemPackages = map toString config.environment.systemPackages;
    nix = {
      inherit (config.nix) distributedBuilds settings;
    };
    programs.ssh.extraConfig = config.programs.ssh.extraConfig;
    services.openssh = {
      inherit (config.services.openssh) enable extraConfig;
    };
    systemd.services = lib.mapAttrs (n: s: {
      inherit (s)
        after
        wants
        wantedBy
        environment
        serviceConfig
        description
        documentation
        ;
    }) (lib.filterAttrs (n: _: lib.hasPrefix "nixrb-discover" n) config.systemd.services);
    systemd.tmpfiles.rules = config.systemd.tmpfiles.rules;
    users.users = lib.mapAttrs (n: u: {
      inherit (u)
        name
        group
        isSystemUser
        useDefaultShell
        description
        ;
      shell = toString u.shell;
      keys = u.openssh.authorizedKeys.keys;
    }) (lib.filterAttrs (n: _: !lib.elem n [ "root" "nobody" ]) config.users.users);
    users.groups = lib.attrNames config.users.groups;
    networking.firewall.interfaces = config.networking.firewall.interfaces;
  };
}
