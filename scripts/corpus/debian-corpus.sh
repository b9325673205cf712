#!/usr/bin/env bash
# The second default workload's data: ~99 MB of freely licensed English text from 17 Debian 12
# packages (dictionaries, Austen, two public-domain Bibles, fortunes, manuals; the list and the
# licences: debian_corpus.py), tokenized by `plexus tokenize` into llm.c shards.
#
#   scripts/corpus/debian-corpus.sh [OUT_DIR] [BUILD_DIR]      (about 10 minutes on 2 cores)
#
# OUT_DIR (default data/debian) gets corpus.txt, tokenizer.model (BPE, 8192 tokens),
# train_000.bin and val_000.bin (the last 1% of the lines). The packages are fetched with
# `apt-get download` (no root, nothing installed; apt's package lists must be current: the
# set-up script runs apt-get update) and unpacked under OUT_DIR/packages. Each step is skipped
# when its output exists, so an interrupted run continues.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
out=$(mkdir -p "${1:-$root/data/debian}" && cd "${1:-$root/data/debian}" && pwd)
build=${2:-$root/build}
packages="dict-gcide wordnet-base dict-foldoc dict-jargon dict-devil r-cran-janeaustenr sword-text-web
  sword-text-kjv fortunes linux-doc-6.1 python3.11-doc perl-doc postgresql-doc-15 libreoffice-help-en-us
  debian-handbook git-doc vim-runtime"

if [ ! -f "$out/packages/.unpacked" ]; then
  mkdir -p "$out/packages/debs" "$out/packages/root"
  echo "corpus: downloading 17 packages (~150 MB) into $out/packages/debs" >&2
  (cd "$out/packages/debs" && apt-get download $packages)
  for deb in "$out"/packages/debs/*.deb; do dpkg-deb -x "$deb" "$out/packages/root"; done
  touch "$out/packages/.unpacked"
fi
if [ ! -f "$out/corpus.txt" ]; then
  echo "corpus: extracting the text (about 30 s)" >&2
  python3 "$root/scripts/corpus/debian_corpus.py" "$out/packages/root" "$out/corpus.txt.part"
  mv "$out/corpus.txt.part" "$out/corpus.txt"
fi
if [ ! -f "$out/val_000.bin" ]; then
  if [ -f "$out/tokenizer.model" ]; then  # trained by an earlier run: the same ids
    "$build/plexus" tokenize "$out/corpus.txt" --out "$out" --model "$out/tokenizer.model"
  else
    "$build/plexus" tokenize "$out/corpus.txt" --out "$out" --vocab 8192
  fi
fi
echo "corpus: $(wc -c < "$out/corpus.txt") bytes of text in $out/corpus.txt; shards and tokenizer in $out" >&2
