#!/usr/bin/env bash
# Prepares a fresh checkout: .venv with the pinned packages, browser assets from
# npm, and (for tests) Debian's chromium. Re-runs are quick: each step is skipped
# when its inputs have not changed. Prints progress; fails with one line.
#   scripts/bootstrap.sh            # what `make run` needs
#   scripts/bootstrap.sh --browser  # also chromium, for `make test`
set -euo pipefail
cd "$(dirname "$0")/.."

want_browser=0
[ "${1:-}" = "--browser" ] && want_browser=1

say() { printf '==> %s\n' "$*"; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

apt_missing=()
need_deb() {  # need_deb COMMAND PACKAGE
  command -v "$1" >/dev/null 2>&1 || apt_missing+=("$2")
}

PYTHON=${PYTHON:-}
if [ -z "$PYTHON" ]; then
  for candidate in python3.11 python3; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))'; then
      PYTHON=$candidate; break
    fi
  done
fi
[ -n "$PYTHON" ] || die "Python 3.11 is required (set PYTHON=/path/to/python3.11)."

need_deb node nodejs
need_deb npm npm
# The workspaces' sandboxes (runtime/backends/bwrap.py).
need_deb bwrap bubblewrap
[ "$want_browser" = 1 ] && need_deb chromium chromium
if ! "$PYTHON" -c 'import venv, ensurepip' >/dev/null 2>&1; then apt_missing+=("python3-venv"); fi
if [ "${#apt_missing[@]}" -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "Installing Debian packages: ${apt_missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${apt_missing[@]}" >/dev/null
  else
    die "missing system packages; run: sudo apt-get install -y ${apt_missing[*]}"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  say "Creating .venv with $PYTHON"
  "$PYTHON" -m venv .venv || die "could not create .venv"
fi

stamp=".venv/.requirements-$(cat requirements/dev.txt requirements/nodeps.txt | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  say "Installing Python packages (several minutes on a fresh machine: llama-cpp-python compiles)"
  .venv/bin/python -m pip install --quiet --upgrade pip >/dev/null
  .venv/bin/python -m pip install --quiet -r requirements/dev.txt || die "pip install failed (see above)"
  .venv/bin/python -m pip install --quiet --no-deps -r requirements/nodeps.txt || die "pip install failed (see above)"
  rm -f .venv/.requirements-*
  touch "$stamp"
fi

npm_stamp="node_modules/.stamp-$(cat package.json package-lock.json | sha1sum | cut -c1-12)"
if [ ! -f "$npm_stamp" ] || [ ! -f static/vendor/htmx.min.js ] || [ ! -f static/vendor/xterm/xterm.js ]; then
  say "Installing browser assets from npm"
  npm ci --no-audit --no-fund --silent >/dev/null || die "npm ci failed"
  mkdir -p static/vendor/swagger-ui static/vendor/xterm
  cp node_modules/htmx.org/dist/htmx.min.js static/vendor/
  cp node_modules/swagger-ui-dist/{swagger-ui-bundle.js,swagger-ui-standalone-preset.js,swagger-ui.css,favicon-32x32.png} \
    static/vendor/swagger-ui/
  # The source maps too: collectstatic's manifest storage follows sourceMappingURL.
  cp node_modules/@xterm/xterm/lib/xterm.js{,.map} node_modules/@xterm/xterm/css/xterm.css \
    node_modules/@xterm/addon-fit/lib/addon-fit.js{,.map} static/vendor/xterm/
  rm -f node_modules/.stamp-*
  touch "$npm_stamp"
fi
