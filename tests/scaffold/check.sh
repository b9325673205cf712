#!/usr/bin/env bash
# `plexus new` for every kind, as a plugin author would: install plexus into a temporary prefix,
# write each scaffold, build it out of tree with find_package(plexus), and require that
# `plexus check` passes on the library as written.
set -euo pipefail
build_dir=$1
work=$(mktemp -d /tmp/plexus-scaffold-XXXXXX)
trap 'rm -rf "$work"' EXIT
cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
plexus="$work/prefix/bin/plexus"
launcher=()
command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
for kind in model dataset optimizer strategy comm; do
  name="my_$kind"
  "$plexus" new "$kind" "$name" "$work/$kind" > /dev/null
  # No build type given: the installed package must make it Release.
  cmake -S "$work/$kind" -B "$work/$kind/build" -DCMAKE_PREFIX_PATH="$work/prefix" "${launcher[@]}" > "$work/$kind.configure.log"
  grep -q "CMAKE_BUILD_TYPE:STRING=Release" "$work/$kind/build/CMakeCache.txt" || { echo "scaffold $kind: not a Release build"; exit 1; }
  cmake --build "$work/$kind/build" -j2 > "$work/$kind.build.log" || { cat "$work/$kind.build.log"; exit 1; }
  library="$work/$kind/build/plugins/plexus_${kind}_${name}.so"
  if ! env -u PLEXUS_PLUGIN_PATH "$plexus" check "$library" > "$work/$kind.check.log" 2>&1; then
    cat "$work/$kind.check.log"
    echo "scaffold $kind: plexus check failed"
    exit 1
  fi
  grep "^plexus check:" "$work/$kind.check.log" | sed "s/^/scaffold $kind: /"
done
# A second scaffold into a folder that is not empty is refused, naming the folder.
if "$plexus" new optimizer again "$work/model" > "$work/again.log" 2>&1 || ! grep -q "exists and is not empty" "$work/again.log"; then
  cat "$work/again.log"; echo "plexus new wrote into a folder that was not empty"; exit 1
fi
echo "every scaffold built out of tree and passed plexus check"
