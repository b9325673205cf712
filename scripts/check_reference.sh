#!/usr/bin/env bash
# Fails when docs/reference/config.md is not what `plexus plugins --markdown` prints now (a key,
# default or doc string changed in a schema without the reference being regenerated).
#   scripts/check_reference.sh BUILD_DIR            check
#   scripts/check_reference.sh BUILD_DIR --write    regenerate the committed copy
#   scripts/check_reference.sh BUILD_DIR FILE       check FILE instead (the test that a stale copy fails)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
build=${1:?usage: scripts/check_reference.sh BUILD_DIR [--write]}
committed="$root/docs/reference/config.md"
if [ -n "${2:-}" ] && [ "$2" != "--write" ]; then committed=$2; fi
fresh=$(mktemp)
trap 'rm -f "$fresh"' EXIT
env -u PLEXUS_PLUGIN_PATH "$build/plexus" plugins --markdown > "$fresh"
if [ "${2:-}" = "--write" ]; then
  cp "$fresh" "$committed"
  echo "wrote $committed"
  exit 0
fi
if ! diff -u "$committed" "$fresh"; then
  echo "$committed is stale: regenerate docs/reference/config.md with scripts/check_reference.sh $build --write" >&2
  exit 1
fi
echo "$committed is current"
