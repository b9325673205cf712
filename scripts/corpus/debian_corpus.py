#!/usr/bin/env python3
"""One plain-text English corpus from freely licensed Debian 12 (main) packages.

usage: debian_corpus.py ROOT OUT.txt [SECTION ...]

ROOT is "/" where the packages are installed, or a folder their .debs were unpacked into
(`dpkg-deb -x`). Each line of OUT.txt is one paragraph, definition, verse or quotation (what
`plexus tokenize` takes as a document), at most 3000 bytes; exact duplicates are dropped. A
section whose files are missing is skipped with a note. Standard library only; deterministic.

The sections, their packages and licences (from each package's copyright file):
  gcide       dict-gcide              GPL-2+        GNU Collaborative International Dictionary
  wordnet     wordnet-base            WordNet 3.0   glosses (BSD-like licence)
  foldoc      dict-foldoc             GFDL 1.1+     Free On-line Dictionary of Computing
  jargon      dict-jargon             public domain The Jargon File
  devil       dict-devil              public domain Bierce, The Devil's Dictionary
  austen      r-cran-janeaustenr      MIT / PD      Jane Austen's six novels
  bible-web   sword-text-web          public domain World English Bible
  bible-kjv   sword-text-kjv          public domain King James Version
  fortunes    fortunes                BSD           fortune(6)'s quotations
  linux-doc   linux-doc-6.1           GPL-2         the kernel's Documentation/ (reST)
  python-doc  python3.11-doc          PSF           Python's manuals (reST sources)
  perl-doc    perl-doc                GPL-1+/Artistic  perl's pod manuals
  pg-doc      postgresql-doc-15       PostgreSQL    the PostgreSQL manual (HTML)
  lo-help     libreoffice-help-en-us  MPL-2.0       LibreOffice's help (HTML)
  handbook    debian-handbook         GPL-2+/CC-BY-SA  The Debian Administrator's Handbook
  git-doc     git-doc                 GPL-2         git's manuals (asciidoc)
  vim-doc     vim-runtime             OPL-1+        vim's help
Code, tables and markup are dropped; technical sections keep paragraphs that read as prose.
"""
import glob
import gzip
import html
import html.parser
import os
import re
import struct
import sys
import zlib

SPACES = re.compile(r"\s+")


def read_text(path):
    opener = gzip.open if path.endswith((".gz", ".dz")) else open
    with opener(path, "rb") as f:
        return f.read().decode("utf-8", "replace")


def clean(s):
    """One line: no overstrikes or control characters, runs of white space as one space."""
    s = re.sub(r".\x08", "", s.replace("\x00", ""))
    s = re.sub(r"[\x00-\x08\x0b-\x1f\x7f]", "", s)
    return SPACES.sub(" ", s).strip()


def reads_as_prose(s, min_words=5, letters=0.80):
    """At least min_words words, mostly letters and punctuation (not code, paths or numbers)."""
    if len(s.split()) < min_words:
        return False
    chars = s.replace(" ", "")
    n = max(1, len(chars))
    alpha = sum(c.isalpha() for c in chars) / n
    wordish = sum(c.isalpha() or c in ".,;:'\"!?()-" for c in chars) / n
    return alpha >= letters - 0.15 and wordish >= letters


# -- dictd dictionaries (.dict.dz: gzip'd text, one entry per block) -------------------------

GCIDE_SOURCE = re.compile(r"\[[^\]\n]*(?:Webster|WordNet|PJC|Century|Suppl\.|Dict\.)[^\]\n]*\]")
GCIDE_ACCENT = re.compile(r"\[(?:[=.'`\"~^-]([A-Za-z]{1,2})|([A-Za-z])[\^~])\]")  # [=a], ['e], [n~]
GCIDE_NAMED = {"ae": "ae", "AE": "AE", "oe": "oe", "OE": "OE", "eth": "th", "thorn": "th",
               "imac": "i", "aum": "a", "asl": "a", "add": "a", "root": ""}
GCIDE_NAMED_RE = re.compile(r"\[(" + "|".join(GCIDE_NAMED) + r")\]")


def gcide_entry(s):
    """GCIDE's markup off: source tags, the pronunciation, accent codes; None for synonym lists."""
    s = GCIDE_SOURCE.sub("", s)
    s = re.sub(r"\\[^\\]*\\,?", "", s, count=1)  # the pronunciation, \Af*fect"\
    s = GCIDE_ACCENT.sub(lambda m: m.group(1) or m.group(2), s)
    s = GCIDE_NAMED_RE.sub(lambda m: GCIDE_NAMED[m.group(1)], s)
    return None if s.startswith("Syn:") else s


def dictd(path, gcide=False):
    """Entries (GCIDE: each definition and quotation) as lines; the database's own header skipped."""
    lines = read_text(path).split("\n")
    start = next(i for i, l in enumerate(lines) if re.match(r"^\S+ \\", l)) if gcide else 0
    out, block = [], []

    def flush():
        s = " ".join(l.strip() for l in block)
        block.clear()
        if not s or s.startswith(("00-database", "00database")):
            return
        if gcide and (s := gcide_entry(s)) is None:
            return
        s = clean(re.sub(r"\s+([,.;:])", r"\1", s.replace("{", "").replace("}", "")))
        if len(s.split()) >= 4:
            out.append(s)

    for l in lines[start:]:
        if not l.strip() or (gcide and not l[0].isspace()):  # GCIDE: a headword starts an entry
            flush()
        if l.strip():
            block.append(l)
    flush()
    return out


# -- WordNet: the gloss after '|' on each synset line ------------------------------------------

def wordnet(root):
    out = []
    for pos in ("noun", "verb", "adj", "adv"):
        with open(os.path.join(root, "usr/share/wordnet", "data." + pos), encoding="utf-8", errors="replace") as f:
            for l in f:
                if l.startswith("  ") or "|" not in l:  # the licence header
                    continue
                head, gloss = l.split("|", 1)
                word = re.sub(r"\(.*\)$", "", head.split()[4].replace("_", " "))
                out.append(clean(f"{word}: {gloss}"))
    return out


# -- janeaustenr: R's lazy-load database (zlib'd XDR serializations) ---------------------------

def rdata_strings(path):
    """The character vectors of each object in an R .rdb file: just enough of R's XDR format
    (R Internals, "Serialization Formats") to walk lists, pairlists and vectors."""
    data = open(path, "rb").read()
    objects, pos = [], 0
    while pos + 4 < len(data):  # each object: a 4-byte length, then zlib data
        inflate = zlib.decompressobj()
        raw = inflate.decompress(data[pos + 4:])
        pos = len(data) - len(inflate.unused_data)
        objects.append(serialized_strings(raw))
    return objects


def serialized_strings(buf):
    at = [0]

    def int32():
        v = struct.unpack(">i", buf[at[0]:at[0] + 4])[0]
        at[0] += 4
        return v

    def item(out):
        flags = int32()
        kind, has_attr, has_tag = flags & 0xFF, flags & (1 << 9), flags & (1 << 10)
        if kind in (254, 242, 253, 251, 252, 250, 246, 255):  # nil, empty env, references, ...
            return
        if kind == 9:  # CHARSXP
            n = int32()
            if n >= 0:
                out.append(buf[at[0]:at[0] + n].decode("utf-8", "replace"))
                at[0] += n
            return
        if kind == 1:  # SYMSXP
            item([])
            return
        if kind in (2, 17):  # pairlists: attributes, tag, car, cdr
            if has_attr:
                item([])
            if has_tag:
                item([])
            item(out)
            item(out)
            return
        if kind in (10, 13, 14, 15):  # logical, integer, double, complex: skipped
            n = int32()  # (read before `at` is: `at[0] += f()` would add to the old position)
            at[0] += n * {10: 4, 13: 4, 14: 8, 15: 16}[kind]
        elif kind in (16, 19, 20):  # character vectors, lists, expressions
            for _ in range(int32()):
                item(out)
        else:
            raise ValueError("unexpected R object type %d" % kind)
        if has_attr:
            item([])

    at[0] = 2  # "X\n"
    version = int32()
    int32(), int32()  # the writer's R version, the oldest reader's
    if version == 3:
        n = int32()
        at[0] += n  # the native encoding's name
    out = []
    item(out)
    return out


def austen(root):
    out = []
    for book in rdata_strings(os.path.join(root, "usr/lib/R/site-library/janeaustenr/data/Rdata.rdb")):
        paragraph = []
        for l in book + [""]:  # one string a printed line; paragraphs end at empty ones
            if l.strip():
                paragraph.append(l.strip())
            elif paragraph:
                s = clean(" ".join(paragraph))
                paragraph = []
                if len(s.split()) >= 3:
                    out.append(s)
    return out


# -- SWORD zText Bibles: .bzs (offset, size, count) index into zlib blocks of OSIS markup -----

def sword(root, module):
    folder = os.path.join(root, "usr/share/sword/modules/texts/ztext", module)
    out = []
    for testament in ("ot", "nt"):
        if not os.path.exists(os.path.join(folder, testament + ".bzs")):
            continue
        index = open(os.path.join(folder, testament + ".bzs"), "rb").read()
        blocks = open(os.path.join(folder, testament + ".bzz"), "rb").read()
        for i in range(0, len(index), 12):
            offset, size, _ = struct.unpack("<III", index[i:i + 12])
            s = zlib.decompress(blocks[offset:offset + size]).decode("utf-8", "replace")
            s = re.sub(r"<note\b.*?</note>", "", s, flags=re.S)
            s = re.sub(r"<title\b.*?</title>", "\n", s, flags=re.S)
            s = re.sub(r"<(?:chapter|div|p|/p|lb|l|/l)\b[^>]*>", "\n", s)  # paragraphs, poetry lines
            s = html.unescape(re.sub(r"<[^>]*>", "", s).replace("¶", ""))
            out += [l for l in map(clean, s.split("\n")) if len(l.split()) >= 3]
    return out


# -- fortune(6) files: quotations between '%' lines ---------------------------------------------

def fortunes(root):
    out = []
    for path in sorted(glob.glob(os.path.join(root, "usr/share/games/fortunes/*"))):
        name = os.path.basename(path)
        if "." in name or name == "ascii-art" or os.path.isdir(path):  # .dat indexes, pictures
            continue
        out += [s for s in (clean(f.replace("\n", " ")) for f in read_text(path).split("\n%\n")) if len(s.split()) >= 4]
    return out


# -- reST, asciidoc and vim help (txt) and pod: prose paragraphs, code and tables dropped -------

ADORNMENT = re.compile(r"^\s*([=\-~^\"'`#*+<>_:.])\1{2,}\s*$")  # heading underlines, rules
BULLET = re.compile(r"^\s*(?:[-*+o]|\d+[.)]|#\.|\(\w\))\s+\S")


def rst_inline(s):
    s = re.sub(r":[\w:+-]+:`([^`<]*?)\s*<[^>`]*>`", r"\1", s)  # :role:`text <target>`
    s = re.sub(r":[\w:+-]+:`~?!?([^`]*)`", r"\1", s)  # :role:`text`
    s = re.sub(r"`([^`<]*?)\s*<[^>`]*>`__?", r"\1", s)  # `text <url>`_
    s = re.sub(r"``([^`]*)``", r"\1", s)
    s = re.sub(r"`([^`]*)`_{0,2}", r"\1", s)
    s = re.sub(r"\*\*([^*]+)\*\*", r"\1", s)
    s = re.sub(r"(?<!\w)\*([^*\s][^*]*)\*(?!\w)", r"\1", s)
    s = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", s)  # markdown links
    return re.sub(r"(?<!\w)_([^_]+)_(?!\w)", r"\1", s)


def pod_inline(s):
    s = s.replace("E<gt>", ">").replace("E<lt>", "<").replace("E<verbar>", "|").replace("E<sol>", "/")
    for _ in range(3):  # nested codes
        s = re.sub(r"[A-Z]<<+\s(.*?)\s>>+", r"\1", s)
        s = re.sub(r"L<([^<>|]*)\|[^<>]*>", r"\1", s)
        s = re.sub(r"[A-Z]<([^<>]*)>", r"\1", s)
    return s


def markup_item(s, kind):
    if kind == "pod":
        return clean(pod_inline(s))
    s = re.sub(r"\|([^|\s]+)\|", r"\1", rst_inline(s))  # vim's |tags|
    s = re.sub(r"::$", ":", s.lstrip("#").strip())
    return clean(re.sub(r"^(?:[-*+o]|\d+[.)]|#\.|\(\w\)) ", "", s))


def skipped_paragraph(para, kind):
    first = para[0]
    if kind in ("rst", "txt") and (first.startswith("..") or ADORNMENT.match(first) or
                                   any(x.lstrip().startswith(("+-", "|", "+=", "===")) for x in para)):
        return True  # directives, comments, headings, tables
    if kind == "pod" and (first.startswith("=") or first[:1].isspace()):
        return True  # commands, verbatim blocks
    return kind == "txt" and first.startswith(("    ", "\t"))  # indented examples


def markup_paragraphs(text, kind):
    paragraphs, current = [], []
    for l in text.split("\n") + [""]:
        if l.strip():
            current.append(l.rstrip())
        elif current:
            paragraphs.append(current)
            current = []
    out, literal_follows = [], False
    for para in paragraphs:
        if literal_follows and para[0][:1].isspace():
            continue  # the body of a reST literal block ("::" or a code directive before it)
        literal_follows = kind == "rst" and (para[-1].rstrip().endswith("::") or
                                             para[0].lstrip().startswith((".. code", ".. kernel", ".. literal")))
        if skipped_paragraph(para, kind):
            continue
        items = []  # list items apart, other lines joined
        for x in (x for x in para if not ADORNMENT.match(x)):
            if not items or BULLET.match(x):
                items.append(x.strip())
            else:
                items[-1] += " " + x.strip()
        out += [s for s in (markup_item(s, kind) for s in items) if reads_as_prose(s)]
    return out


def markup_files(root, pattern, kind, exclude=()):
    out = []
    for path in sorted(glob.glob(os.path.join(root, pattern), recursive=True)):
        if not any(x in path for x in exclude):
            out += markup_paragraphs(read_text(path), kind)
    return out


# -- HTML: the text of block elements, code and navigation skipped ----------------------------

class HtmlText(html.parser.HTMLParser):
    BLOCKS = {"p", "div", "br", "li", "dt", "dd", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "table",
              "section", "blockquote", "title", "pre", "td", "th", "ul", "ol"}
    SKIPPED = {"script", "style", "head", "nav", "pre"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skipping = [], 0

    def handle_starttag(self, tag, attrs):
        self.skipping += tag in self.SKIPPED
        if tag in self.BLOCKS:
            self.parts.append("\x01")

    def handle_endtag(self, tag):
        if tag in self.SKIPPED and self.skipping:
            self.skipping -= 1
        if tag in self.BLOCKS:
            self.parts.append("\x01")

    def handle_data(self, data):
        if not self.skipping:
            self.parts.append(data.replace("\n", " "))


def html_files(root, pattern):
    out = []
    for path in sorted(glob.glob(os.path.join(root, pattern), recursive=True)):
        if os.path.isdir(path):
            continue
        parser = HtmlText()
        parser.feed(read_text(path))
        out += [s for s in map(clean, "".join(parser.parts).split("\x01")) if reads_as_prose(s, min_words=6)]
    return out


SECTIONS = [  # name, package, extractor(root)
    ("gcide", "dict-gcide", lambda r: dictd(os.path.join(r, "usr/share/dictd/gcide.dict.dz"), gcide=True)),
    ("wordnet", "wordnet-base", wordnet),
    ("foldoc", "dict-foldoc", lambda r: dictd(os.path.join(r, "usr/share/dictd/foldoc.dict.dz"))),
    ("jargon", "dict-jargon", lambda r: dictd(os.path.join(r, "usr/share/dictd/jargon.dict.dz"))),
    ("devil", "dict-devil", lambda r: dictd(os.path.join(r, "usr/share/dictd/devil.dict.dz"))),
    ("austen", "r-cran-janeaustenr", austen),
    ("bible-web", "sword-text-web", lambda r: sword(r, "engWEB2015eb")),
    ("bible-kjv", "sword-text-kjv", lambda r: sword(r, "engKJV2006eb")),
    ("fortunes", "fortunes", fortunes),
    ("linux-doc", "linux-doc-6.1", lambda r: markup_files(
        r, "usr/share/doc/linux-doc-6.1/Documentation/**/*.rst.gz", "rst", ("/translations/",))),
    ("python-doc", "python3.11-doc", lambda r: markup_files(
        r, "usr/share/doc/python3.11/html/_sources/**/*.rst.txt", "rst")),
    ("perl-doc", "perl-doc", lambda r: markup_files(r, "usr/share/perl/5.*/pod/*.pod", "pod")),
    ("pg-doc", "postgresql-doc-15", lambda r: html_files(r, "usr/share/doc/postgresql-doc-15/html/*.html")),
    ("lo-help", "libreoffice-help-en-us", lambda r: html_files(r, "usr/share/libreoffice/help/en-US/**/*.html")),
    ("handbook", "debian-handbook", lambda r: html_files(r, "usr/share/doc/debian-handbook/html/en-US/*.html")),
    ("git-doc", "git-doc", lambda r: markup_files(r, "usr/share/doc/git-doc/*.txt", "txt")),
    ("vim-doc", "vim-runtime", lambda r: markup_files(r, "usr/share/vim/vim9*/doc/*.txt", "txt", ("/version",))),
]


def split_long(s, limit=3000):
    """Lines of at most `limit` UTF-8 bytes, cut after a sentence where one is near."""
    while len(s.encode()) > limit:
        cut_at = limit
        while len(s[:cut_at].encode()) > limit:
            cut_at = int(cut_at * 0.8)
        cut = s.rfind(". ", 0, cut_at)
        cut = cut + 1 if cut > cut_at // 3 else s.rfind(" ", 0, cut_at)
        if cut <= 0:
            cut = cut_at
        yield s[:cut].strip()
        s = s[cut:].strip()
    if s:
        yield s


def main(argv):
    if len(argv) < 3:
        sys.exit(__doc__)
    root, out_path, wanted = argv[1], argv[2], set(argv[3:])
    unknown = wanted - {name for name, _, _ in SECTIONS}
    if unknown:
        sys.exit("unknown section(s): " + ", ".join(sorted(unknown)))
    seen = set()
    box_drawing = re.compile("[\u2500-\u257f]{3}")
    with open(out_path, "w", encoding="utf-8") as out:
        for name, package, extract in SECTIONS:
            if wanted and name not in wanted:
                continue
            try:
                lines = extract(root)
            except (FileNotFoundError, StopIteration) as e:
                print(f"{name:11s} skipped: {package} is not there ({e})", file=sys.stderr)
                continue
            size = count = 0
            for s in lines:
                if box_drawing.search(s) or s in seen:  # tables drawn in boxes; exact duplicates
                    continue
                seen.add(s)
                for part in split_long(s):
                    out.write(part + "\n")
                    size, count = size + len(part.encode()) + 1, count + 1
            print(f"{name:11s} {package:24s} {size:>11,d} bytes {count:>8,d} lines", file=sys.stderr)


if __name__ == "__main__":
    main(sys.argv)
