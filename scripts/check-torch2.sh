#!/usr/bin/env bash
# Compiles every plexus source, syntax only, against LibTorch 2.x's headers as the CUDA build on a
# GPU machine sees them: PLEXUS_WITH_CUDA on, the NCCL transport and the [gpu] tests included.
# Debian 12's LibTorch is 1.13 and CPU-only, so without this the 2.x side of compat.hpp and the
# CUDA-only files are first compiled on a device machine, whose time is scarce (15 minutes a
# session): a typo there costs a whole device run.
#
#   scripts/check-torch2.sh [BUILD_DIR]     (default build-torch2; needs scripts/setup.sh done)
#   CHECK_ONLY=REGEX scripts/check-torch2.sh   only the sources whose path matches (grep -E)
#
# The headers are Debian 13's libtorch-cuda-dev (LibTorch 2.6, headers only: its libraries need a
# newer glibc, and nothing here is linked or run), downloaded once into .torch2-headers/ (ignored
# by git) and checked against a pinned SHA-256. CUDA's own headers (and nccl.h) come from
# /usr/local/cuda, or CUDA_HOME. Each source gets the flags CMake gives it in the CPU build, with
# these headers first on the include path. Logs: BUILD_DIR/torch2-check/. Exit status 1 when any
# source fails to compile.
#
# What it does not catch: link errors, and API differences between 2.6 and the GPU machine's
# newer LibTorch (2.11 at the last device run).
set -uo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
build=${1:-build-torch2}
jobs=${PLEXUS_JOBS:-2}
cuda=${CUDA_HOME:-/usr/local/cuda}
deb_url=http://deb.debian.org/debian/pool/contrib/p/pytorch-cuda/libtorch-cuda-dev_2.6.0+dfsg-7+b1_amd64.deb
deb_sha256=8906705aa8824b1ad3783b80688accd5bc05fedd97d0ccb40cb461f8f43f5182
headers=$root/.torch2-headers

if [ ! -f "$cuda/include/cuda_runtime_api.h" ] || [ ! -f "$cuda/include/nccl.h" ]; then
  echo "check-torch2: no CUDA headers (cuda_runtime_api.h, nccl.h) in $cuda/include; set CUDA_HOME" >&2
  exit 2
fi

# 1. LibTorch 2.6's headers, once.
if [ ! -f "$headers/usr/include/torch/csrc/api/include/torch/version.h" ]; then
  mkdir -p "$headers"
  deb=$headers/libtorch-cuda-dev.deb
  echo "check-torch2: downloading $deb_url"
  python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' "$deb_url" "$deb" ||
    { echo "check-torch2: download failed (the package may have moved: look for libtorch-cuda-dev in Debian 13's contrib)" >&2; exit 2; }
  echo "$deb_sha256  $deb" | sha256sum -c --quiet ||
    { echo "check-torch2: $deb does not have the pinned SHA-256; not using it" >&2; rm -f "$deb"; exit 2; }
  dpkg-deb -x "$deb" "$headers" && rm -f "$deb"
fi
version=$(awk '/define TORCH_VERSION_(MAJOR|MINOR|PATCH)/{printf "%s%s", sep, $3; sep="."}' "$headers/usr/include/torch/csrc/api/include/torch/version.h")

# 2. The compile commands of the CPU build (configure only), with the CUDA build's config header.
#    Configured every time (seconds), so that new sources are in.
mkdir -p "$build"
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_EXPORT_COMPILE_COMMANDS=ON > "$build/configure.log" 2>&1 ||
  { echo "check-torch2: configuring $build failed ($build/configure.log)" >&2; exit 2; }
sed -i 's/^#define PLEXUS_WITH_CUDA .*/#define PLEXUS_WITH_CUDA 1/' "$build/include/plexus/build_config.hpp"
logs=$(cd "$build" && pwd)/torch2-check
rm -rf "$logs" && mkdir -p "$logs/cmd"

# 3. One shell command per source: the 2.6 and CUDA headers ahead of Debian's 1.13 in
#    /usr/include, the precompiled header replaced by the header it precompiles, -fsyntax-only
#    instead of an object file. The CUDA build's own sources take the flags of the CPU-build
#    file they replace (cuda_none.cpp) or sit beside (a test). The .cu kernels go through nvcc.
python3 - "$root" "$build" "$logs" "$headers/usr/include" "$cuda/include" <<'EOF' || exit 2
import json, os, shlex, sys
root, build, logs, torch_inc, cuda_inc = sys.argv[1:]
entries = json.load(open(os.path.join(build, "compile_commands.json")))
extra = ["-I" + torch_inc, "-I" + os.path.join(torch_inc, "torch/csrc/api/include"), "-I" + cuda_inc,
         "-DUSE_DISTRIBUTED", "-DUSE_C10D_GLOO", "-DUSE_C10D_NCCL", "-fsyntax-only"]

# The precompiled header of this check: torch/torch.h parsed once with 2.6's headers (about 35 s)
# instead of in every source (17 s against 7 s for a small one). Every source that used the CPU
# build's precompiled header has the flags it is built with, give or take -D macros torch.h does
# not read; where GCC finds it does not fit, it reads the header as text (-Winvalid-pch says so).
pch = os.path.join(logs, "torch2_pch.hxx")
with open(pch, "w") as f:
    f.write("#include <torch/torch.h>\n")

def command(entry, source, syntax_only=True):
    args = shlex.split(entry["command"])
    out, skip = [args[0]] + (extra if syntax_only else extra[:-1]), False
    for i, a in enumerate(args[1:], 1):
        if skip:
            skip = False
        elif a in ("-o", "-c"):
            skip = a == "-o"
        elif a == "-include" and args[i + 1].endswith(".hxx"):  # CMake's precompiled header
            if syntax_only:
                out += ["-Winvalid-pch", "-include", pch]
            skip = True
        elif a == "-Winvalid-pch" or a == entry["file"]:
            pass
        else:
            out.append(a)
    if not syntax_only:
        return "cd %s && %s -x c++-header %s -o %s.gch" % (shlex.quote(entry["directory"]), " ".join(map(shlex.quote, out)),
                                                         shlex.quote(pch), shlex.quote(pch))
    return "cd %s && %s %s" % (shlex.quote(entry["directory"]), " ".join(map(shlex.quote, out)), shlex.quote(source))

pch_user = next(e for e in entries if "cmake_pch.hxx" in e["command"] and "_EXPORTS" not in e["command"])
with open(os.path.join(logs, "pch.sh"), "w") as f:
    f.write("%s > %s.log 2>&1 || { rm -f %s.gch; echo 'check-torch2: the precompiled header failed (%s.log); "
            "compiling without it'; }\n" % (command(pch_user, None, False), shlex.quote(pch), shlex.quote(pch), pch))

cuda_sources = {"host/device/cuda_none.cpp": ["host/device/cuda.cpp", "host/device/kernels/operators_cuda.cpp"],
                "host/transport/nccl_none.cpp": ["host/transport/nccl.cpp"],
                "tests/test_precision.cpp": ["tests/test_precision.cpp", "tests/test_gpu.cpp"]}
n, seen = 0, set()
for entry in entries:
    rel = os.path.relpath(entry["file"], root)
    if rel.startswith(("build", "cmake/")):  # generated sources, the PCH's own stub
        continue
    seen.add(rel)
    for source in cuda_sources.get(rel, [rel]):
        n += 1
        log = os.path.join(logs, source.replace("/", "_") + ".log")
        with open(os.path.join(logs, "cmd", "%03d.sh" % n), "w") as f:
            f.write("%s > %s 2>&1 || echo FAILED: %s\n" % (command(entry, os.path.join(root, source)), shlex.quote(log), source))
# The kernels themselves: compiled for real by nvcc (CUDA's headers only), for the architectures
# CMake's CUDA build targets.
nvcc = os.path.join(os.path.dirname(cuda_inc), "bin", "nvcc")
for kernel in sorted(os.listdir(os.path.join(root, "host/device/kernels"))):
    if not kernel.endswith(".cu"):
        continue
    n += 1
    source = "host/device/kernels/" + kernel
    log = os.path.join(logs, source.replace("/", "_") + ".log")
    with open(os.path.join(logs, "cmd", "%03d.sh" % n), "w") as f:
        f.write("%s -std=c++17 -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 -c %s "
                "-o /dev/null > %s 2>&1 || echo FAILED: %s\n" % (shlex.quote(nvcc), shlex.quote(os.path.join(root, source)),
                                                              shlex.quote(log), source))
missing = sorted(set(cuda_sources) - seen)
if missing:
    sys.exit("check-torch2: no compile command for %s, whose flags the CUDA-only sources borrow; "
             "update cuda_sources in scripts/check-torch2.sh" % ", ".join(missing))
EOF
if [ -n "${CHECK_ONLY:-}" ]; then
  for f in "$logs"/cmd/*.sh; do grep -qE "FAILED: .*(${CHECK_ONLY})" "$f" || rm "$f"; done
fi
total=$(ls "$logs/cmd" | wc -l)
[ "$total" -gt 0 ] || { echo "check-torch2: no source matches CHECK_ONLY=${CHECK_ONLY:-}" >&2; exit 2; }
echo "check-torch2: $total sources against LibTorch $version (CUDA headers from $cuda), $jobs at a time; logs in $logs"

# 4. The precompiled header, then every source; a source's name is printed as it fails.
bash "$logs/pch.sh"
ls "$logs"/cmd/*.sh | xargs -P "$jobs" -n 1 bash | tee "$logs/failed.txt"
failed=$(grep -c '^FAILED' "$logs/failed.txt")
if [ "$failed" -gt 0 ]; then
  echo "check-torch2: $failed of $total sources do not compile against LibTorch $version; first errors:"
  grep -h -m 3 -A 3 'error:' "$logs"/*.log | head -40
  exit 1
fi
echo "check-torch2: all $total sources compile against LibTorch $version with CUDA"
