# Reads a systemd unit file written the way ours are (one KEY=VALUE per
# line, no continuations, # comments) into
#   { Unit = { Description = "..."; ... }; Service = { ... }; Install = { ... }; }
# A key given once is a string; a key given more than once is a list, in
# file order. Builtins only, so it evaluates without nixpkgs
# (nix/nixfiles_test.go checks it against the Go parser).
let
  lines = text: builtins.filter builtins.isString (builtins.split "\n" text);
  section = line: builtins.match "[[]([A-Za-z]+)[]]" line;
  keyValue = line: builtins.match "([A-Za-z]+)=(.*)" line;

  parse =
    text:
    let
      step =
        acc: line:
        let
          s = section line;
          kv = keyValue line;
        in
        if s != null then
          acc // { current = builtins.head s; }
        else if kv != null then
          acc
          // {
            pairs = acc.pairs ++ [
              {
                section = acc.current;
                key = builtins.elemAt kv 0;
                value = builtins.elemAt kv 1;
              }
            ];
          }
        else
          acc;
      pairs =
        (builtins.foldl' step {
          current = null;
          pairs = [ ];
        } (lines text)).pairs;
      sections = builtins.attrNames (builtins.listToAttrs (map (p: { name = p.section; value = null; }) pairs));
      valuesOf = sec: key: map (p: p.value) (builtins.filter (p: p.section == sec && p.key == key) pairs);
      keysOf = sec: builtins.attrNames (builtins.listToAttrs (map (p: { name = p.key; value = null; }) (builtins.filter (p: p.section == sec) pairs)));
      one = vs: if builtins.length vs == 1 then builtins.head vs else vs;
    in
    builtins.listToAttrs (
      map (sec: {
        name = sec;
        value = builtins.listToAttrs (map (key: { name = key; value = one (valuesOf sec key); }) (keysOf sec));
      }) sections
    );

  # "A B  C" -> [ "A" "B" "C" ]
  words = s: builtins.filter (w: builtins.isString w && w != "") (builtins.split " +" s);

  # [ "PATH=/x" "HOME=/run/y" ] (or one string) -> { PATH = "/x"; HOME = "/run/y"; }
  environment =
    env:
    builtins.listToAttrs (
      map (
        e:
        let
          m = builtins.match "([A-Za-z_][A-Za-z0-9_]*)=(.*)" e;
        in
        {
          name = builtins.elemAt m 0;
          value = builtins.elemAt m 1;
        }
      ) (if builtins.isList env then env else [ env ])
    );
in
{
  inherit parse words environment;
  parseFile = path: parse (builtins.readFile path);
}
