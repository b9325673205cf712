#!/usr/bin/env python3
"""The host's walls, checked from its includes (ctest `host_layers`).

    scripts/check_layers.py ROOT LAYER...     # layers lowest first, as in host/CMakeLists.txt
    scripts/check_layers.py --self-test LAYER...

Fails (exit 1, one line per finding) when
  - a file of host/ lies outside a layer folder (host/CMakeLists.txt aside),
  - a host source includes a header of a higher layer, or a quoted header that is neither
    "LAYER/..." nor a file beside it,
  - a host header has the name of an SDK header (plexus/config.hpp and a host config.hpp would be
    two different files behind one name),
  - an SDK header includes anything of the host (the SDK is what plugins build against alone),
  - a contract header (sdk/include/plexus/*.hpp) includes the kit (plexus/kit/): plugins may use
    the kit, the contract never needs it,
  - host code names an in-tree plugin in a string ("lopt", "gpt"): defaults, partners and
    capabilities come from the plugins' descriptors. A few plugin names are also host words
    (HOST_WORDS below) and are allowed.
--self-test builds small trees that break each rule and checks that each is caught.
"""
import os
import re
import sys
import tempfile

INCLUDE = re.compile(r'^\s*#\s*include\s+"([^"]+)"', re.M)
STRING = re.compile(r'"([a-z0-9_]+)"')
# Plugin names that are also words of the host's own vocabulary.
HOST_WORDS = {
    "tokens": "a metric and a [train] key",
    "hierarchical": "a collective algorithm of the simulated network (sim.algorithm)",
    "single": "a launch mode (launch.mode)",
}
SOURCE_ENDINGS = (".cpp", ".hpp", ".cu", ".cuh", ".h")


def sources(folder):
    for base, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if d != "node_modules"]
        for name in files:
            yield os.path.join(base, name)


def plugin_names(root):
    plugins = os.path.join(root, "plugins")
    names = set()
    if os.path.isdir(plugins):
        for kind in os.listdir(plugins):
            folder = os.path.join(plugins, kind)
            if os.path.isdir(folder) and kind != "shared":
                names.update(n for n in os.listdir(folder) if os.path.isdir(os.path.join(folder, n)))
    return names - set(HOST_WORDS)


def code_only(text):
    """The text without // comments (string literals keep their slashes)."""
    return "\n".join(re.sub(r'//(?=(?:[^"]*"[^"]*")*[^"]*$).*', "", line) for line in text.split("\n"))


def check(root, layers):
    host = os.path.join(root, "host")
    sdk = os.path.join(root, "sdk", "include", "plexus")
    plugins = plugin_names(root)
    rank = {name: i for i, name in enumerate(layers)}
    sdk_headers = {n for n in os.listdir(sdk) if n.endswith(".hpp")} if os.path.isdir(sdk) else set()
    problems = []
    for path in sorted(sources(host)):
        rel = os.path.relpath(path, host)
        layer = rel.split(os.sep)[0]
        if os.sep not in rel:
            if rel != "CMakeLists.txt":
                problems.append("host/%s: outside every layer (put it in one of: %s)" % (rel, " ".join(layers)))
            continue
        if layer not in rank:
            problems.append("host/%s: '%s' is not a layer (host/CMakeLists.txt lists them)" % (rel, layer))
            continue
        if not path.endswith(SOURCE_ENDINGS):
            continue
        if os.path.basename(path) in sdk_headers:
            problems.append("host/%s: has the name of the SDK header plexus/%s" % (rel, os.path.basename(path)))
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        for match in INCLUDE.finditer(text):
            target = match.group(1)
            line = text.count("\n", 0, match.start()) + 1
            first = target.split("/")[0]
            if "/" in target and first in rank:
                if rank[first] > rank[layer]:
                    problems.append("host/%s:%d: includes \"%s\": layer '%s' may not use '%s', which is above it"
                                    % (rel, line, target, layer, first))
            elif not os.path.exists(os.path.join(os.path.dirname(path), target)):
                problems.append("host/%s:%d: includes \"%s\", which is neither \"LAYER/...\" nor a file beside it"
                                % (rel, line, target))
        code = code_only(text)
        for match in STRING.finditer(code):
            if match.group(1) in plugins:
                line = code.count("\n", 0, match.start()) + 1
                problems.append("host/%s:%d: names the plugin \"%s\": the host names no plugin (use its descriptor's "
                                "extras)" % (rel, line, match.group(1)))
    for path in sorted(sources(sdk)) if os.path.isdir(sdk) else []:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read()
        contract = os.path.dirname(path) == sdk
        for match in INCLUDE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            if not match.group(1).startswith("plexus/"):
                problems.append("sdk/include/plexus/%s:%d: includes \"%s\": the SDK includes only plexus/ headers"
                                % (os.path.relpath(path, sdk), line, match.group(1)))
            elif contract and match.group(1).startswith("plexus/kit/"):
                problems.append("sdk/include/plexus/%s:%d: includes \"%s\": the contract never includes the kit"
                                % (os.path.relpath(path, sdk), line, match.group(1)))
    return problems


def write(root, rel, text):
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)


def self_test(layers):
    low, high = layers[0], layers[1]
    good = {
        "host/CMakeLists.txt": "",
        "host/%s/a.hpp" % low: "#pragma once\n",
        "host/%s/b.cpp" % high: '#include "%s/a.hpp"\n#include "b.hpp"\n' % low,
        "host/%s/b.hpp" % high: "#pragma once\n",
        "sdk/include/plexus/model.hpp": '#include "plexus/error.hpp"\n',
        "sdk/include/plexus/kit/util.hpp": '#include "plexus/model.hpp"\n',
        "plugins/models/toy/toy.cpp": "",
        "host/%s/e.cpp" % low: 'const char* mode = "single";  // not "toy": a comment may name it\n',
    }
    cases = {
        "upward include": ("host/%s/c.cpp" % low, '#include "%s/b.hpp"\n' % high),
        "file outside a layer": ("host/loose.cpp", ""),
        "folder that is no layer": ("host/misc/x.cpp", ""),
        "bare include": ("host/%s/d.cpp" % high, '#include "nowhere.hpp"\n'),
        "SDK name reused": ("host/%s/model.hpp" % high, "#pragma once\n"),
        "SDK includes the host": ("sdk/include/plexus/bad.hpp", '#include "%s/a.hpp"\n' % low),
        "contract includes the kit": ("sdk/include/plexus/bad.hpp", '#include "plexus/kit/util.hpp"\n'),
        "host names a plugin": ("host/%s/f.cpp" % high, 'const char* fallback = "toy";\n'),
    }
    failures = 0
    with tempfile.TemporaryDirectory() as clean:
        for rel, text in good.items():
            write(clean, rel, text)
        if check(clean, layers):
            print("self-test: a clean tree was refused: %s" % check(clean, layers))
            failures += 1
    for name, (rel, text) in cases.items():
        with tempfile.TemporaryDirectory() as tree:
            for r, t in good.items():
                write(tree, r, t)
            write(tree, rel, text)
            found = check(tree, layers)
            if len(found) != 1:
                print("self-test: %s: expected one finding, got %s" % (name, found))
                failures += 1
    print("self-test: %d of %d cases caught" % (len(cases) + 1 - failures, len(cases) + 1))
    return 1 if failures else 0


def main(argv):
    if len(argv) >= 3 and argv[0] == "--self-test":
        return self_test(argv[1:])
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    problems = check(argv[0], argv[1:])
    for p in problems:
        print(p)
    print("host layers (%s): %s" % (" -> ".join(argv[1:]), "%d problem(s)" % len(problems) if problems else "ok"))
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
