#!/usr/bin/env bash
# Installs what a fresh Debian machine lacks to build and test shardwire: PostgreSQL server
# binaries, make, python3-venv. Idempotent; used by .ci/run and by `make venv`.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

export DEBIAN_FRONTEND=noninteractive

SUDO=()
if [ "$(id -u)" -ne 0 ] && command -v sudo >/dev/null 2>&1; then
    SUDO=(sudo -E)
fi

apt_updated=0
apt_install() {
    if [ "$apt_updated" -eq 0 ]; then
        "${SUDO[@]}" apt-get update
        apt_updated=1
    fi
    "${SUDO[@]}" apt-get install -y --no-install-recommends "$@"
}

# A directory holding the PostgreSQL server binaries we need.
is_pg_bindir() {
    local d=$1 exe
    [ -n "$d" ] || return 1
    for exe in initdb pg_ctl postgres psql; do
        [ -x "$d/$exe" ] || return 1
    done
}

# Same search as proxy.localpg.find_bindir: pg_config --bindir, initdb on PATH,
# newest /usr/lib/postgresql/*/bin.
find_pg_bindir() {
    local d initdb
    if command -v pg_config >/dev/null 2>&1; then
        d=$(pg_config --bindir 2>/dev/null || true)
        if is_pg_bindir "$d"; then echo "$d"; return 0; fi
    fi
    if initdb=$(command -v initdb 2>/dev/null); then
        for d in "$(dirname "$initdb")" "$(dirname "$(readlink -f "$initdb")")"; do
            if is_pg_bindir "$d"; then echo "$d"; return 0; fi
        done
    fi
    while read -r d; do
        if is_pg_bindir "$d"; then echo "$d"; return 0; fi
    done < <(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V -r)
    return 1
}

if ! pg_bindir=$(find_pg_bindir); then
    echo "--- PostgreSQL not found; installing it with apt-get"
    apt_install postgresql
    pg_bindir=$(find_pg_bindir)
fi

if ! command -v make >/dev/null 2>&1; then
    echo "--- make not found; installing it with apt-get"
    apt_install make
fi

# promtool (from Debian's prometheus package) checks deploy/prometheus/ in
# tests/integration/test_deploy.py. Only the binary is wanted: a temporary policy-rc.d
# (unless one exists) keeps the package's postinst from starting a prometheus daemon
# (invoke-rc.d / deb-systemd-invoke honour it), and where systemd runs, the unit the
# postinst enabled is disabled again.
if ! command -v promtool >/dev/null 2>&1; then
    echo "--- promtool not found; installing prometheus with apt-get"
    policy_rc_d=/usr/sbin/policy-rc.d
    if [ -e "$policy_rc_d" ]; then
        apt_install prometheus
    else
        trap '"${SUDO[@]}" rm -f "$policy_rc_d"' EXIT
        printf '#!/bin/sh\nexit 101\n' | "${SUDO[@]}" tee "$policy_rc_d" >/dev/null
        "${SUDO[@]}" chmod 755 "$policy_rc_d"
        apt_install prometheus
        "${SUDO[@]}" rm -f "$policy_rc_d"
        trap - EXIT
    fi
    if [ -d /run/systemd/system ]; then
        "${SUDO[@]}" systemctl disable prometheus.service >/dev/null 2>&1 || true
    fi
    command -v promtool >/dev/null 2>&1
fi

if [ ! -x .venv/bin/python ]; then
    check_dir=$(mktemp -d)
    if ! python3 -m venv "$check_dir/venv" >/dev/null 2>&1; then
        echo "--- python3 -m venv does not work; installing python3-venv with apt-get"
        apt_install python3-venv
    fi
    rm -rf "$check_dir"
fi

echo "postgres bindir: $pg_bindir"
echo "promtool: $(command -v promtool)"
