#!/usr/bin/env bash
# Install everything the project and its test suite need, on Debian bookworm:
#   * Debian packages for the real peers (skopeo, podman, docker-registry, fuse, zstd, ...),
#     installed only when one of their binaries is missing;
#   * a virtualenv in .venv with `pip install -e '.[test,fuse]'`, redone only when the
#     packaging inputs (pyproject.toml, setup.py, chunked/**.c) or the interpreter changed.
#
# Idempotent. Package-manager noise goes to a log file ($CHUNKED_SETUP_LOG, default
# ${TMPDIR:-/tmp}/chunked-setup.log) that is printed when a step fails.
#
# Environment knobs:
#   PYTHON              interpreter used to create .venv (default: python3, must be >= 3.11)
#   CHUNKED_SETUP_LOG   where the install log goes
#   CHUNKED_SKIP_APT=1  never touch apt (e.g. on a non-Debian developer machine)
#   CHUNKED_FORCE_APT=1 run apt-get update/install even when every binary is present
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO_ROOT=$(pwd)
VENV="$REPO_ROOT/.venv"
LOG=${CHUNKED_SETUP_LOG:-${TMPDIR:-/tmp}/chunked-setup.log}
: >"$LOG"

say() { printf 'setup: %s\n' "$*"; }

# Run a command with its output appended to $LOG; on failure show the log and stop.
logged() {
    local rc=0
    printf '\n$ %s\n' "$*" >>"$LOG"
    "$@" >>"$LOG" 2>&1 || rc=$?
    if [ "$rc" -ne 0 ]; then
        printf 'setup: command failed (exit %d): %s\n' "$rc" "$*" >&2
        printf 'setup: ---- last lines of %s ----\n' "$LOG" >&2
        tail -n 150 "$LOG" >&2
        exit "$rc"
    fi
}

# --------------------------------------------------------------------------- apt
# Binaries the tests need, and the Debian package that provides each.
APT_PACKAGES=(
    zstd skopeo podman docker-registry fuse3 fuse-overlayfs uidmap runc
    python3-venv python3-dev gcc libssl-dev xfsprogs
)
REQUIRED_BINARIES=(
    zstd skopeo podman docker-registry fusermount3 fuse-overlayfs newuidmap
    crun runc conmon gcc mkfs.xfs
)

case ":$PATH:" in *:/usr/sbin:*) ;; *) PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin" ;; esac
missing=()
for bin in "${REQUIRED_BINARIES[@]}"; do
    command -v "$bin" >/dev/null 2>&1 || missing+=("$bin")
done

# headers the C extensions build against (chunked/_native.c and chunked/puller/_pullio.c hash with libcrypto)
[ -e /usr/include/openssl/evp.h ] || missing+=("openssl/evp.h")

if [ "${CHUNKED_FORCE_APT:-0}" = 1 ]; then missing+=("(forced)"); fi

if [ "${#missing[@]}" -eq 0 ]; then
    say "system packages present"
elif [ "${CHUNKED_SKIP_APT:-0}" = 1 ]; then
    say "WARNING: missing ${missing[*]} and CHUNKED_SKIP_APT=1: interop tests will fail" >&2
else
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "setup: missing ${missing[*]} and no apt-get to install them" >&2
        exit 1
    fi
    SUDO=()
    if [ "$(id -u)" -ne 0 ]; then
        command -v sudo >/dev/null 2>&1 || { echo "setup: need root (or sudo) for apt" >&2; exit 1; }
        SUDO=(sudo -n)
    fi
    say "missing ${missing[*]}: installing Debian packages (log: $LOG)"
    # Keep package post-install scripts from starting daemons (docker-registry ships a
    # service listening on :5000); the tests start their own registry on a free port.
    policy=/usr/sbin/policy-rc.d
    added_policy=0
    if [ ! -e "$policy" ]; then
        "${SUDO[@]}" sh -c "printf '#!/bin/sh\nexit 101\n' >$policy && chmod 755 $policy"
        added_policy=1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt_rc=0
    (
        set -e
        logged "${SUDO[@]}" apt-get update -q
        # Recommends stay on: that is the configuration the interop tests were proven with
        # (podman's recommends bring fuse-overlayfs, slirp4netns, catatonit, netavark...).
        logged "${SUDO[@]}" apt-get install -y -q "${APT_PACKAGES[@]}"
    ) || apt_rc=$?
    if [ "$added_policy" = 1 ]; then "${SUDO[@]}" rm -f "$policy"; fi
    [ "$apt_rc" -eq 0 ] || exit "$apt_rc"
    say "Debian packages installed"
fi

# --------------------------------------------------------------------------- venv
pick_python() {
    local candidate
    for candidate in "${PYTHON:-}" python3 python3.11 /usr/bin/python3; do
        [ -n "$candidate" ] || continue
        command -v "$candidate" >/dev/null 2>&1 || continue
        if "$candidate" -c 'import sys, venv; sys.exit(sys.version_info < (3, 11))' \
            >/dev/null 2>&1; then
            command -v "$candidate"
            return 0
        fi
    done
    echo "setup: no Python >= 3.11 with the venv module found (set PYTHON=...)" >&2
    return 1
}

PY=$(pick_python)

# Fingerprint of everything that decides what `pip install -e` produces.
fingerprint() {
    {
        "$PY" -c 'import sys; print(sys.version, sys.executable)'
        cat pyproject.toml setup.py 2>/dev/null || true
        cat chunked/*.c chunked/*.h chunked/*/*.c 2>/dev/null || true
    } | sha256sum | cut -d' ' -f1
}
STAMP="$VENV/.chunked-install-stamp"
want=$(fingerprint)

if [ -x "$VENV/bin/python" ] && ! "$VENV/bin/python" -c 'import sys' >/dev/null 2>&1; then
    say "existing .venv is broken: recreating"
    rm -rf "$VENV"
fi
if [ ! -x "$VENV/bin/python" ]; then
    say "creating .venv with $PY"
    rm -rf "$VENV"
    logged "$PY" -m venv "$VENV"
fi

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
    && "$VENV/bin/python" -c 'import importlib.metadata as m; m.version("chunked"); import pytest' \
        >/dev/null 2>&1; then
    say ".venv up to date"
else
    say "pip install -e '.[test,fuse]' (log: $LOG)"
    rm -f "$STAMP"
    export PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1
    # a kernel that fails to build is an error here, not a silent fallback (setup.py)
    CHUNKED_REQUIRE_NATIVE=1 logged "$VENV/bin/python" -m pip install -e '.[test,fuse]'
    echo "$want" >"$STAMP"
    say ".venv ready"
fi
