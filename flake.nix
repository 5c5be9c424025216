{
  description = "Agentyard: a development shell with the toolchain `make run` and `make test` expect";

  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-24.11";

  outputs = { self, nixpkgs }:
    let
      systems = [ "x86_64-linux" "aarch64-linux" "x86_64-darwin" "aarch64-darwin" ];
      forAllSystems = f: nixpkgs.lib.genAttrs systems (system: f nixpkgs.legacyPackages.${system});
    in
    {
      devShells = forAllSystems (pkgs:
        let
          inherit (pkgs) lib stdenv;
        in
        {
          default = pkgs.mkShell {
            packages = [
              pkgs.python311
              pkgs.postgresql_16
              pkgs.redis
              pkgs.nodejs
              pkgs.gnumake
              pkgs.git
            ]
            # Both are Linux-only in nixpkgs: sandboxes need Linux namespaces, and
            # the browser tests use whichever `chromium` is on PATH.
            ++ lib.optionals stdenv.isLinux [ pkgs.bubblewrap pkgs.chromium ];

            # The venv is filled from PyPI wheels (psycopg-binary, uvloop, the
            # PostgreSQL inside pgserver), built for ordinary Linux systems; on
            # NixOS they find libstdc++ and zlib only through this.
            LD_LIBRARY_PATH = lib.optionalString stdenv.isLinux
              (lib.makeLibraryPath [ stdenv.cc.cc.lib pkgs.zlib ]);

            shellHook = ''
              echo "Agentyard dev shell: Python 3.11, PostgreSQL 16, Redis, Node.js${lib.optionalString stdenv.isLinux ", Chromium, bubblewrap"}."
              echo "  make run    start the platform (web, worker, beat)"
              echo "  make test   lint, type-check and run every test"
              echo "Both work as they do outside Nix: scripts/bootstrap.sh fills .venv and node_modules,"
              echo "and PostgreSQL and Redis are the ones at DATABASE_URL / REDIS_URL, or embedded ones."
            '';
          };
        });
    };
}
