#!/usr/bin/env bash
# Installs plexus from BUILD_DIR into a temporary prefix, builds the signsgd plugin in this
# folder against it with find_package(plexus), installs it, and trains a few steps with it. Then
# the same against the build tree itself (plexus_DIR=BUILD_DIR, nothing installed). On the way:
# the installed plexus finds its own plugins (and none of the build tree's), and refuses none.
set -euo pipefail
build_dir=$1
src_dir=$2
work=$(mktemp -d /tmp/plexus-oot-XXXXXX)
trap 'rm -rf "$work"' EXIT

cmake --install "$build_dir" --prefix "$work/prefix" > "$work/install.log"
test -f "$work/prefix/lib/cmake/plexus/plexusConfig.cmake"
test -f "$work/prefix/include/plexus/plexus.hpp"

launcher=()
command -v ccache > /dev/null && launcher=(-DCMAKE_CXX_COMPILER_LAUNCHER=ccache)
cmake -S "$src_dir" -B "$work/build" -DCMAKE_PREFIX_PATH="$work/prefix" -DCMAKE_BUILD_TYPE=Release \
      "${launcher[@]}" > "$work/configure.log"
cmake --build "$work/build" -j2 > "$work/build.log"
test -f "$work/build/plugins/plexus_optimizer_signsgd.so"

# The installed host searches beside itself, never the build tree it came from.
"$work/prefix/bin/plexus" plugins > "$work/own.txt" 2>&1
head -1 "$work/own.txt" | grep -q "^search path: $work/prefix/lib/plexus/plugins" \
  || { echo "the installed plexus searches elsewhere:"; head -1 "$work/own.txt"; exit 1; }
if grep -q "refused" "$work/own.txt"; then echo "the installed plexus refused its own plugins:"; cat "$work/own.txt"; exit 1; fi
grep -q "adamw" "$work/own.txt"

# The plugin's own install rule puts it in <its prefix>/lib/plexus/plugins.
cmake --install "$work/build" --prefix "$work/mine" > "$work/install-plugin.log"
test -f "$work/mine/lib/plexus/plugins/plexus_optimizer_signsgd.so"
export PLEXUS_PLUGIN_PATH="$work/mine/lib/plexus/plugins"
"$work/prefix/bin/plexus" plugins > "$work/plugins.txt"
grep -q "signsgd .*built out of tree" "$work/plugins.txt"
cat > "$work/exp.toml" <<TOML
[model]
name = "gpt"
n_layer = 1
d_model = 16
n_head = 2
[data]
name = "synthetic"
[optimizer]
name = "signsgd"
lr = 1e-3
[train]
steps = 3
seq_len = 16
batch_size = 4
peak_flops = 1e11
[results]
db = "$work/r.db"
progress = "lines"
TOML
"$work/prefix/bin/plexus" run "$work/exp.toml" > "$work/run.log"
cat "$work/run.log"
grep -q "finished: 3 steps" "$work/run.log"

# Against the build tree: find_package(plexus) with plexus_DIR, no install.
cmake -S "$src_dir" -B "$work/build-tree" -Dplexus_DIR="$(cd "$build_dir" && pwd)" -DCMAKE_BUILD_TYPE=Release \
      "${launcher[@]}" > "$work/configure-tree.log"
cmake --build "$work/build-tree" -j2 > "$work/build-tree.log"
test -f "$work/build-tree/plugins/plexus_optimizer_signsgd.so"
PLEXUS_PLUGIN_PATH="$work/build-tree/plugins" "$build_dir/plexus" plugins > "$work/plugins-tree.txt"
grep -q "signsgd .*built out of tree" "$work/plugins-tree.txt"
echo "out-of-tree plugin: built against the installed SDK and against the build tree, installed, loaded and trained"
