#!/usr/bin/env bash
# Install Node >= 22 and the official MCP conformance suite into a project-local prefix.
#
# Why: the suite (npm @modelcontextprotocol/conformance) needs Node >= 22; the machine has
# an older system node. The npm package `node` ships a real Node binary, so both come from
# the npm registry with the system npm, into .ci/node/ (gitignored), and nothing outside it
# is touched. Idempotent: when the pinned versions are already there it only prints paths.
#
# Usage:  bash .ci/install-node.sh          # install if needed, print where things are
# Then:   .ci/node/conformance server --url http://127.0.0.1:PORT/mcp [--suite all] [-o DIR]
#
# Pinned versions (verified together with mcp 2.3.0 on 2026-11-24; override to try others):
NODE_VERSION="${MCPFAST_NODE_VERSION:-22.23.3}"
CONFORMANCE_VERSION="${MCPFAST_CONFORMANCE_VERSION:-0.1.16}"
# Upper bound, in seconds, on each npm install (a first install takes ~10 s on a good link).
INSTALL_TIMEOUT="${MCPFAST_INSTALL_TIMEOUT:-240}"

set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
prefix="$root/.ci/node"
node="$prefix/node_modules/.bin/node"
suite_pkg="$prefix/node_modules/@modelcontextprotocol/conformance"
suite_js="$suite_pkg/dist/index.js"
launcher="$prefix/conformance"

installed() {
    [ -x "$node" ] && [ -f "$suite_js" ] && [ -x "$launcher" ] || return 1
    [ "$("$node" --version 2>/dev/null)" = "v$NODE_VERSION" ] || return 1
    [ "$("$node" -p "require('$suite_pkg/package.json').version" 2>/dev/null)" = "$CONFORMANCE_VERSION" ]
}

report() {
    echo "node:        $node ($("$node" --version))"
    echo "conformance: $suite_js (v$CONFORMANCE_VERSION)"
    echo "launcher:    $launcher"
}

mkdir -p "$prefix"
exec 9>"$prefix/.install.lock"
# Parallel test runs: one installs, the others wait (at most two installs' time) and then
# find it done.
if ! flock -w $((2 * INSTALL_TIMEOUT)) 9; then
    echo "install-node.sh: another install still holds $prefix/.install.lock" >&2
    exit 1
fi

if installed; then
    report
    exit 0
fi

if ! command -v npm >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    # A fresh Debian/Ubuntu machine: the system npm (any version) is only the fetcher.
    echo "install-node.sh: npm not found; installing it with apt-get ..." >&2
    timeout "$INSTALL_TIMEOUT" apt-get update -qq >&2 || true
    DEBIAN_FRONTEND=noninteractive timeout "$INSTALL_TIMEOUT" apt-get install -y -qq npm >&2 || true
fi
if ! command -v npm >/dev/null 2>&1; then
    echo "install-node.sh: npm not found (and could not be installed); it is needed to fetch node@$NODE_VERSION" >&2
    exit 1
fi

echo "Installing node@$NODE_VERSION and @modelcontextprotocol/conformance@$CONFORMANCE_VERSION into $prefix ..."
# Our own package.json, so npm treats the prefix as one project and keeps both packages.
cat >"$prefix/package.json" <<EOF
{
  "private": true,
  "description": "mcpfast CI tools (written by .ci/install-node.sh)",
  "dependencies": {
    "node": "$NODE_VERSION",
    "@modelcontextprotocol/conformance": "$CONFORMANCE_VERSION"
  }
}
EOF
# Bounded: a stalled registry must not hang CI (npm's own retries can take many minutes).
bounded() {
    local rc=0
    timeout --kill-after=10 "$INSTALL_TIMEOUT" "$@" || rc=$?
    if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then
        echo "install-node.sh: '$*' did not finish within ${INSTALL_TIMEOUT}s" >&2
    fi
    return "$rc"
}
bounded npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error

# The `node` package puts its binary in place from a preinstall script. Should a future npm
# refuse to run install scripts, take the platform package it would have fetched instead.
if [ "$("$node" --version 2>/dev/null)" != "v$NODE_VERSION" ]; then
    arch="$(uname -m)"
    case "$arch" in x86_64) arch=x64 ;; aarch64) arch=arm64 ;; esac
    platform_pkg="node-$(uname -s | tr '[:upper:]' '[:lower:]')-$arch"
    echo "node@$NODE_VERSION gave no working binary; installing $platform_pkg@$NODE_VERSION"
    bounded npm install --prefix "$prefix" --no-audit --no-fund --loglevel=error --no-save "$platform_pkg@$NODE_VERSION"
    ln -sf "../$platform_pkg/bin/node" "$node"
fi

cat >"$launcher" <<'EOF'
#!/bin/sh
# The conformance CLI run by the Node installed beside it (the CLI's shebang would pick
# whatever `node` is first on PATH, which may be too old).
here="$(cd "$(dirname "$0")" && pwd)"
PATH="$here/node_modules/.bin:$PATH"
export PATH
exec "$here/node_modules/.bin/node" "$here/node_modules/@modelcontextprotocol/conformance/dist/index.js" "$@"
EOF
chmod +x "$launcher"

if ! installed; then
    echo "install-node.sh: installation finished but the pinned versions are not in place" >&2
    exit 1
fi
report
