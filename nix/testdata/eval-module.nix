# Evaluates ../module.nix without nixpkgs, for nix/nixfiles_test.go: a
# stub `lib` (just what the module uses), stub pkgs and utils, and a
# small resolver for mkIf / mkMerge / mkDefault. It is not the NixOS
# module system: it checks the module's wiring (which settings, services,
# sshd lines and assertions each configuration produces), not the types.
#
#   nix-instantiate --eval --strict --json testdata/eval-module.nix \
#     --arg user '{ client.enable = true; }' --argstr nixVersion 2.28.0
{
  user,
  nixVersion ? "2.28.0",
  nixPname ? "nix",
  buildMachines ? [ ],
}:
let
  lib = rec {
    mkOption = attrs: attrs // { _isOption = true; };
    mkEnableOption = what: mkOption {
      default = false;
      description = "Whether to enable ${what}.";
    };
    mkIf = condition: content: {
      _type = "if";
      inherit condition content;
    };
    mkMerge = contents: {
      _type = "merge";
      inherit contents;
    };
    mkOverride = priority: content: {
      _type = "override";
      inherit priority content;
    };
    mkDefault = mkOverride 1000;
    literalExpression = text: {
      _type = "literalExpression";
      inherit text;
    };
    types =
      let
        t = name: { inherit name; };
      in
      {
        str = t "str";
        bool = t "bool";
        int = t "int";
        port = t "port";
        path = t "path";
        package = t "package";
        numbers.positive = t "positive";
        ints.unsigned = t "unsigned";
        enum = _: t "enum";
        nullOr = _: t "nullOr";
        listOf = _: t "listOf";
        attrsOf = _: t "attrsOf";
        either = _: _: t "either";
        anything = t "anything";
        submodule = _: t "submodule";
      };
    hasInfix =
      infix: s:
      let
        n = builtins.stringLength infix;
        go = i: i + n <= builtins.stringLength s && (builtins.substring i n s == infix || go (i + 1));
      in
      go 0;
  };

  pkgs = {
    callPackage = _: _: {
      outPath = "/nix/store/00000000000000000000000000000000-nixrb-discover";
      name = "nixrb-discover";
    };
    writeText = name: _: "/nix/store/00000000000000000000000000000000-${name}";
    runtimeShell = "/nix/store/00000000000000000000000000000000-bash/bin/sh";
  };
  utils.escapeSystemdExecArgs = builtins.concatStringsSep " ";

  module = import ../module.nix;

  # Option defaults overlaid with the user's settings.
  withDefaults =
    opts: set:
    builtins.mapAttrs (
      name: o:
      if o ? _isOption then
        (if set ? ${name} then set.${name} else o.default)
      else
        withDefaults o (set.${name} or { })
    ) opts;

  isProp = v: builtins.isAttrs v && v ? _type && builtins.elem v._type [ "if" "merge" "override" ];
  skip = { _skip = true; };
  isSkip = v: builtins.isAttrs v && v ? _skip;

  merge2 =
    a: b:
    if isSkip a then
      b
    else if isSkip b then
      a
    else if builtins.isAttrs a && builtins.isAttrs b && !(a ? outPath) then
      let
        names = builtins.attrNames (a // b);
      in
      builtins.listToAttrs (
        map (n: {
          name = n;
          value =
            if a ? ${n} && b ? ${n} then
              merge2 a.${n} b.${n}
            else if a ? ${n} then
              a.${n}
            else
              b.${n};
        }) names
      )
    else if builtins.isList a && builtins.isList b then
      a ++ b
    else if a == b then
      a
    else
      throw "conflicting definitions: ${builtins.toJSON a} and ${builtins.toJSON b}";

  resolve =
    v:
    if isProp v then
      (
        if v._type == "if" then
          (if v.condition then resolve v.content else skip)
        else if v._type == "merge" then
          builtins.foldl' merge2 skip (map resolve v.contents)
        else
          resolve v.content
      )
    else if builtins.isAttrs v && !(v ? outPath) && !(v ? _skip) then
      let
        r = builtins.mapAttrs (_: resolve) v;
      in
      removeAttrs r (builtins.filter (n: isSkip r.${n}) (builtins.attrNames r))
    else
      v;

  stubConfig = {
    nix = {
      package = {
        pname = nixPname;
        version = nixVersion;
        outPath = "/nix/store/00000000000000000000000000000000-${nixPname}-${nixVersion}";
      };
      inherit buildMachines;
      settings = out.nix.settings or { };
    };
    services = {
      openssh.ports = [ 22 ];
      tailscale.interfaceName = "tailscale0";
      nixrb-discover = withDefaults evaluated.options.services.nixrb-discover user;
    };
  };

  evaluated = module {
    config = stubConfig;
    inherit lib pkgs utils;
  };
  out = resolve evaluated.config;
in
{
  config = removeAttrs out [ "assertions" ];
  failedAssertions = map (a: a.message) (builtins.filter (a: !a.assertion) (out.assertions or [ ]));
}
