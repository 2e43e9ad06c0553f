#!/usr/bin/env python3
# SPDX-License-Identifier: BSL-1.0
"""Checks that the C++ code in the documentation is quoted from compiled examples.

In an example source, a region is marked with two comment lines:

    // [snippet:NAME]
    ...code...
    // [/snippet:NAME]

In Markdown (README.md and docs/**/*.md), the line before a ```cpp block names the region:

    <!-- snippet: examples/01_single_target.cpp#acquire -->
    ```cpp
    ...the region, dedented...
    ```

The block must equal the region with its common indentation removed (marker lines of other
regions nested inside are dropped; trailing whitespace and leading/trailing blank lines are
ignored). Every ```cpp block under docs/ needs a marker; `<!-- snippet: none (REASON) -->` opts a
block out (compiler output, pseudo-code), to be used sparingly. README.md blocks without a marker
are allowed (its quick start is compiled by the `readme.quickstart` test).

Usage: check_doc_snippets.py ROOT            check; exit 1 listing every mismatch
       check_doc_snippets.py ROOT --update   rewrite the marked blocks from the sources
Python 3 standard library only.
"""
import difflib
import pathlib
import re
import sys

MARKER = re.compile(r"^\s*<!--\s*snippet:\s*(?P<ref>.*?)\s*-->\s*$")
OPT_OUT = re.compile(r"^none\s*\((?P<reason>[^)]+)\)$")
REF = re.compile(r"^(?P<path>[\w./-]+\.(?:cpp|hpp|h|cc))#(?P<name>[\w.-]+)$")
FENCE = re.compile(r"^(?P<indent>\s*)(?P<fence>```+|~~~+)\s*(?P<lang>[\w+-]*)")
REGION_OPEN = re.compile(r"^\s*//\s*\[snippet:(?P<name>[\w.-]+)\]\s*$")
REGION_CLOSE = re.compile(r"^\s*//\s*\[/snippet:(?P<name>[\w.-]+)\]\s*$")
CPP_LANGS = {"cpp", "c++", "cxx"}


def trim(lines):
    lines = [l.rstrip() for l in lines]
    while lines and not lines[0]:
        lines.pop(0)
    while lines and not lines[-1]:
        lines.pop()
    return lines


def dedent(lines):
    indents = [len(l) - len(l.lstrip(" ")) for l in lines if l.strip()]
    cut = min(indents) if indents else 0
    return [l[cut:] if l.strip() else "" for l in lines]


class Sources:
    """The marked regions of example sources, parsed on first use."""

    def __init__(self, root):
        self.root = root
        self.files = {}

    def regions(self, rel):
        if rel not in self.files:
            self.files[rel] = self._parse(rel)
        return self.files[rel]

    def _parse(self, rel):
        path = self.root / rel
        if not path.is_file():
            return ({}, [f"{rel}: no such file"])
        regions, errors, open_at = {}, [], {}
        for no, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            m = REGION_OPEN.match(line)
            if m:
                name = m["name"]
                if name in open_at or name in regions:
                    errors.append(f"{rel}:{no}: snippet '{name}' opened twice")
                open_at[name] = no
                regions.setdefault(name, [])
                continue
            m = REGION_CLOSE.match(line)
            if m:
                name = m["name"]
                if name not in open_at:
                    errors.append(f"{rel}:{no}: snippet '{name}' closed but not open")
                open_at.pop(name, None)
                continue
            for name in open_at:
                regions[name].append(line)
        for name, no in open_at.items():
            errors.append(f"{rel}:{no}: snippet '{name}' is never closed")
        return ({k: trim(dedent(trim(v))) for k, v in regions.items()}, errors)


def blocks(md_lines):
    """Yields (marker_line_no or None, marker text or None, fence line index, end index, lang)."""
    i, n = 0, len(md_lines)
    while i < n:
        m = FENCE.match(md_lines[i])
        if not m:
            i += 1
            continue
        fence, lang = m["fence"], m["lang"].lower()
        end = i + 1
        while end < n and not md_lines[end].strip().startswith(fence):
            end += 1
        # The marker: the nearest non-blank line above the fence.
        j = i - 1
        while j >= 0 and not md_lines[j].strip():
            j -= 1
        mm = MARKER.match(md_lines[j]) if j >= 0 else None
        yield (j if mm else None, mm["ref"] if mm else None, i, end, lang)
        i = end + 1


def check_file(root, md, sources, update):
    rel = md.relative_to(root).as_posix()
    in_docs = rel.startswith("docs/")
    lines = md.read_text(encoding="utf-8").splitlines()
    errors, checked, used_markers = [], 0, set()
    replacements = []  # (start, end, new lines)
    for marker_at, ref, start, end, lang in blocks(lines):
        if marker_at is not None:
            used_markers.add(marker_at)
        if lang not in CPP_LANGS:
            if ref is not None:
                errors.append(f"{rel}:{marker_at + 1}: snippet marker before a ```{lang} block (only ```cpp is checked)")
            continue
        where = f"{rel}:{start + 1}"
        if ref is None:
            if in_docs:
                errors.append(f"{where}: ```cpp block without a snippet marker "
                              "(add <!-- snippet: examples/FILE.cpp#NAME --> on the line before, "
                              "or <!-- snippet: none (diagnostic) --> for compiler output/pseudo-code)")
            continue
        if OPT_OUT.match(ref):
            continue
        m = REF.match(ref)
        if not m:
            errors.append(f"{where}: malformed snippet marker '{ref}' (want PATH.cpp#NAME or none (REASON))")
            continue
        regions, src_errors = sources.regions(m["path"])
        if src_errors and not regions:
            errors.append(f"{where}: {src_errors[0]}")
            continue
        region = regions.get(m["name"])
        if region is None:
            errors.append(f"{where}: {m['path']} has no snippet '{m['name']}'")
            continue
        checked += 1
        quoted = trim(lines[start + 1:end])
        if quoted != region:
            if update:
                replacements.append((start + 1, end, region))
                continue
            diff = difflib.unified_diff(region, quoted, f"{ref} (source)", f"{where} (docs)", lineterm="", n=1)
            errors.append(f"{where}: block differs from {ref}:\n    " + "\n    ".join(diff))
    for no, line in enumerate(lines):
        if MARKER.match(line) and no not in used_markers:
            errors.append(f"{rel}:{no + 1}: snippet marker not followed by a fenced block")
    if update and replacements:
        for s, e, new in reversed(replacements):
            lines[s:e] = new
        md.write_text("\n".join(lines) + "\n", encoding="utf-8")
        print(f"updated {len(replacements)} block(s) in {rel}")
    return errors, checked


def main(argv):
    args = [a for a in argv[1:] if not a.startswith("--")]
    update = "--update" in argv[1:]
    if len(args) != 1:
        print("usage: check_doc_snippets.py ROOT [--update]", file=sys.stderr)
        return 2
    root = pathlib.Path(args[0]).resolve()
    files = [root / "README.md"] + sorted((root / "docs").rglob("*.md"))
    sources = Sources(root)
    errors, checked = [], 0
    for md in files:
        if md.is_file():
            e, c = check_file(root, md, sources, update)
            errors += e
            checked += c
    for rel, (regions, src_errors) in sorted(sources.files.items()):
        errors += [f"{e}" for e in src_errors if regions]
    if errors:
        print(f"check_doc_snippets: {len(errors)} problem(s):", file=sys.stderr)
        for e in errors:
            print("  " + e, file=sys.stderr)
        return 1
    print(f"check_doc_snippets: {checked} quoted block(s) match their sources")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
