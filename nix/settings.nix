# Turns the module's options into the daemons' settings: an attrset whose
# keys are the flag names (the JSON --config file of each daemon), and the
# static builders into a machines file. Builtins only, so it evaluates
# without nixpkgs (nix/module_test.go evaluates it through the module).
let
  # Unset settings (null) and empty repeatable flags are left out, so the
  # binary's own defaults apply.
  clean =
    attrs:
    builtins.listToAttrs (
      builtins.filter (kv: kv.value != null && kv.value != [ ]) (
        map (name: {
          inherit name;
          value = attrs.${name};
        }) (builtins.attrNames attrs)
      )
    );
  # Comma-list flags (--systems, --features): one string; [ ] sets the
  # empty list, null keeps what Nix reports.
  commaList = l: if l == null then null else builtins.concatStringsSep "," l;
  orNull = b: v: if b then v else null;

  # One machines-file line in the format NixOS writes for nix.buildMachines
  # (nixos/modules/config/nix-remote-build.nix), so the same list means
  # the same builders.
  machineLine =
    m:
    let
      dash = l: if l == [ ] then "-" else builtins.concatStringsSep "," l;
      scheme = if m.protocol != null then "${m.protocol}://" else "";
      user = if m.sshUser != null then "${m.sshUser}@" else "";
    in
    builtins.concatStringsSep " " [
      "${scheme}${user}${m.hostName}"
      (
        if m.system != null then
          m.system
        else if m.systems != [ ] then
          builtins.concatStringsSep "," m.systems
        else
          "-"
      )
      (if m.sshKey != null then m.sshKey else "-")
      (toString m.maxJobs)
      (toString m.speedFactor)
      (dash (m.supportedFeatures ++ m.mandatoryFeatures))
      (dash m.mandatoryFeatures)
      (if m.publicHostKey != null then m.publicHostKey else "-")
    ];
in
{
  inherit clean machineLine;

  # advertise: cfg is services.nixrb-discover.advertise.
  advertise =
    cfg:
    clean {
      ssh-user = cfg.sshUser;
      ssh-port = cfg.sshPort;
      protocol = cfg.protocol;
      systems = commaList cfg.systems;
      features = commaList cfg.supportedFeatures;
      mandatory-features = commaList cfg.mandatoryFeatures;
      max-jobs = cfg.maxJobs;
      speed-factor = cfg.speedFactor;
      hostname = cfg.hostName;
      sign-key = cfg.signKeyFile;
      tailnet = cfg.tailnet.enable;
      advert-port = cfg.advertPort;
      allow-tag = cfg.allowTags;
      allow-cap = cfg.allowCaps;
      mdns = cfg.mdns.enable;
      mdns-iface = orNull cfg.mdns.enable cfg.mdns.interfaces;
      enroll-allow-tag = cfg.enrollment.allowTags;
      enroll-allow-cap = cfg.enrollment.allowCaps;
    };

  # client: cfg is services.nixrb-discover.client; paths are the files
  # the module chose (machines, staticFile or null, sshConfig or null).
  client =
    cfg: paths:
    clean {
      machines = paths.machines;
      static = paths.staticFile;
      check-static = orNull (paths.staticFile != null) cfg.checkStatic;
      hold = cfg.hold or null;
      nix-state-dir = cfg.nixStateDir or null;
      ssh-config = paths.sshConfig;
      ssh-key = cfg.sshKey;
      tailnet = cfg.tailnet.enable;
      tag = orNull cfg.tailnet.enable cfg.tags;
      builder = orNull cfg.tailnet.enable cfg.builders;
      address = cfg.address;
      mdns = cfg.mdns.enable;
      mdns-iface = orNull cfg.mdns.enable cfg.mdns.interfaces;
      # A path literal (./fleet.pub) is copied to the store: public keys only.
      trust-key = cfg.trustKeys;
      pin = map (name: "${name}=${cfg.pins.${name}}") (builtins.attrNames cfg.pins);
    };

  # The static builders as a machines file.
  staticMachines = machines: builtins.concatStringsSep "" (map (m: machineLine m + "\n") machines);
}
