#!/usr/bin/env bash
# Install the Debian packages some tests need, when they are missing:
#   prometheus                 prometheus + promtool (tests/unit/test_deploy_monitoring.py,
#                              tests/integration/test_prometheus_scrape.py)
#   chromium, chromium-driver  the browser tests (pytest -m browser)
#   orthanc, orthanc-dicomweb  a real PACS for the DICOM round trip (tests/integration/test_orthanc_roundtrip.py)
#   docker-compose             `docker-compose config` on the compose files (tests/unit/test_deploy_files.py)
#
# Idempotent: installs only what is missing, and does nothing (exit 0) where apt-get is absent or cannot be
# used (not root and no password-less sudo, apt-get update failing); the tests then skip with the reason.
# Usage: scripts/install-system-deps.sh [--dry-run]
#
# Note: on a host running systemd, the prometheus package's postinst enables and starts a prometheus daemon
# on :9090 (and prometheus-node-exporter if recommends are installed, which this script avoids); inside
# containers Debian's policy-rc.d usually forbids that. The tests use their own free ports either way.
set -euo pipefail

dry_run=0
if [[ "${1:-}" == "--dry-run" ]]; then
    dry_run=1
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--dry-run]" >&2
    exit 2
fi

say() { echo "install-system-deps: $*"; }

if ! command -v apt-get >/dev/null 2>&1 || ! command -v dpkg-query >/dev/null 2>&1; then
    say "no apt-get/dpkg here; nothing to do"
    exit 0
fi

if [[ $(id -u) -eq 0 ]]; then
    as_root=()
elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
    as_root=(sudo -n)
else
    say "not root and no password-less sudo; nothing to do"
    exit 0
fi

installed() { dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null | grep -qx installed; }

# package -> apt options (prometheus without recommends: they pull node-exporter, smartmontools, ipmitool...)
declare -A options=(
    [prometheus]="--no-install-recommends"
    [chromium]=""
    [chromium-driver]=""
    [orthanc]="--no-install-recommends"
    [orthanc-dicomweb]="--no-install-recommends"
    [docker-compose]="--no-install-recommends"
)
missing=()
for package in prometheus chromium chromium-driver orthanc orthanc-dicomweb docker-compose; do
    if installed "$package"; then
        say "$package: already installed"
    else
        missing+=("$package")
    fi
done

if [[ ${#missing[@]} -eq 0 ]]; then
    say "nothing to install"
    exit 0
fi
if [[ $dry_run -eq 1 ]]; then
    say "would install: ${missing[*]}"
    exit 0
fi

export DEBIAN_FRONTEND=noninteractive
if ! "${as_root[@]}" apt-get update -qq; then
    say "apt-get update failed (no network or no apt sources?); nothing installed"
    exit 0
fi
for package in "${missing[@]}"; do
    if ! apt-cache show "$package" >/dev/null 2>&1; then
        say "$package: not available from the configured apt sources; skipped"
        continue
    fi
    say "installing $package"
    # shellcheck disable=SC2086  # the options are words on purpose
    "${as_root[@]}" apt-get install -y -qq ${options[$package]} "$package" || say "$package: apt-get install failed"
done
