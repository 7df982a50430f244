# The nixrb-discover binary. `vendorHash` is the NAR hash of the
# `go mod vendor` tree; nix/nixfiles_test.go recomputes it offline and
# fails with the new value when a dependency change makes it stale.
{
  lib,
  buildGoModule,
  go,
  buildGo126Module ? null,
}:
let
  # go.mod asks for Go 1.26.6; use the default Go when it is new enough.
  build =
    if builtins.compareVersions go.version "1.26.6" >= 0 || buildGo126Module == null then
      buildGoModule
    else
      buildGo126Module;
in
build {
  pname = "nixrb-discover";
  version = "0.1.0";
  src = lib.cleanSource ../.;
  vendorHash = "sha256-F5UG4bzvcqs+M3hNZvzsYX/lZ8gB5mqFqFkfpW+3Aek=";
  subPackages = [ "cmd/nixrb-discover" ];
  env.CGO_ENABLED = 0;
  ldflags = [
    "-s"
    "-w"
    "-X main.version=0.1.0"
  ];
  # The tests start sshd, nix-daemon and network namespaces: run them with
  # scripts/test.sh, not in the sandbox.
  doCheck = false;
  meta = {
    description = "Make Nix remote builders configure themselves: discover builders on a tailnet or by mDNS, health-check them, keep the machines file";
    homepage = "https://github.com/nixrb-discover/nixrb-discover";
    mainProgram = "nixrb-discover";
    platforms = lib.platforms.linux ++ lib.platforms.darwin;
  };
}
