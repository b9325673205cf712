#!/usr/bin/env bash
# Formats every C++ file of the repository with .clang-format (clang-format 14, Debian 12's).
#   scripts/format.sh           rewrite the files in place
#   scripts/format.sh --check [FILE...]   list the files that are not formatted; exit 1 if any
# tests/format/ holds a file left unformatted on purpose (the check must catch it).
set -euo pipefail
cd "$(dirname "$0")/.."
formatter=${CLANG_FORMAT:-clang-format}
command -v "$formatter" >/dev/null || { echo "format.sh: $formatter not found (apt install clang-format)" >&2; exit 2; }
mapfile -t files < <(git ls-files '*.cpp' '*.hpp' '*.h' '*.cu' '*.cuh' | grep -v '^tests/format/')
if [[ "${1:-}" == "--check" ]]; then
  shift
  [[ $# -gt 0 ]] && files=("$@")
  bad=0
  for f in "${files[@]}"; do
    if ! "$formatter" --dry-run -Werror "$f" >/dev/null 2>&1; then echo "not formatted: $f"; bad=1; fi
  done
  if [[ $bad == 0 ]]; then echo "format.sh: ${#files[@]} files formatted"; else echo "format.sh: run scripts/format.sh to fix"; fi
  exit $bad
fi
"$formatter" -i "${files[@]}"
