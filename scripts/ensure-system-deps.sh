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

if [ ! -x .venv/bin/python ]; then
    check_dir=$(mktemp -d)
    if ! python3 -m venv "$check_dir/venv" >/dev/null 2>&1; then
        echo "--- python3 -m venv does not work; installing python3-venv with apt-get"
        apt_install python3-venv
    fi
    rm -rf "$check_dir"
fi

echo "postgres bindir: $pg_bindir"
