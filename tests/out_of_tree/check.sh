#!/usr/bin/env bash
# Installs plexus from BUILD_DIR into a temporary prefix, builds the signsgd plugin in this
# folder against it with find_package(plexus), and trains a few steps with it.
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

export PLEXUS_PLUGIN_PATH="$work/build/plugins"
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
echo "out-of-tree plugin: built against the installed SDK, loaded and trained"
