#!/usr/bin/env python3
"""Import cycles among the files of src/.

Lists the edges "file A names an item of file B" (a `use crate::…`, `use super::…`, a
child module's path, or an inline `crate::a::b` path) and reports every cycle: the strongly
connected groups of files, and in each the pairs of files that import each other. Code under
`#[cfg(test)]` is left out (tests may reach anywhere); `--tests` puts it back.

    .ci/import_cycles.py            cycles only; exit 1 when there is one
    .ci/import_cycles.py --edges    every edge too
    .ci/import_cycles.py --tests    count test code as well

A path is resolved to the file of the longest module prefix it names, so `crate::snapshot::Key`
is an edge to the snapshot module's file even when that file only re-exports `Key`: the edge
is how the code is written, which is what a reader follows.
"""

import argparse
import re
import sys
from pathlib import Path

IDENT = r"[A-Za-z_][A-Za-z0-9_]*"


def strip_comments_and_strings(text):
    """The text with comments, string and char literals blanked (newlines kept)."""
    out = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if text.startswith("//", i):
            j = text.find("\n", i)
            j = n if j < 0 else j
            i = j
        elif text.startswith("/*", i):
            depth, j = 1, i + 2
            while j < n and depth:
                if text.startswith("/*", j):
                    depth, j = depth + 1, j + 2
                elif text.startswith("*/", j):
                    depth, j = depth - 1, j + 2
                else:
                    j += 1
            out.append("\n" * text.count("\n", i, j))
            i = j
        elif c == "r" and re.match(r'r#*"', text[i:i + 260]) and not (
            i and (text[i - 1].isalnum() or text[i - 1] == "_")
        ):
            hashes = re.match(r"r(#*)\"", text[i:]).group(1)
            end = text.find('"' + hashes, i + 2 + len(hashes))
            end = n if end < 0 else end + 1 + len(hashes)
            out.append('""' + "\n" * text.count("\n", i, end))
            i = end
        elif c == '"':
            j = i + 1
            while j < n and text[j] != '"':
                j += 2 if text[j] == "\\" else 1
            out.append('""' + "\n" * text.count("\n", i, j))
            i = j + 1
        elif c == "'":
            # A char literal ('a', '\n', '\u{1F600}') or a lifetime ('a): only the former is cut.
            m = re.match(r"'(\\u\{[0-9a-fA-F]+\}|\\.|[^\\'])'", text[i:])
            if m:
                out.append("' '")
                i += m.end()
            else:
                out.append(c)
                i += 1
        else:
            out.append(c)
            i += 1
    return "".join(out)


def strip_cfg_test(text):
    """Blanks every item under `#[cfg(test)]` (a `mod tests { … }`, a `use`, a fn)."""
    out, i = [], 0
    for m in re.finditer(r"#\[cfg\(test\)\]", text):
        if m.start() < i:
            continue
        out.append(text[i:m.start()])
        j = m.end()
        # The item ends at its matching close brace, or at `;` for a brace-less item.
        depth, k = 0, j
        while k < len(text):
            if text[k] == "{":
                depth += 1
            elif text[k] == "}":
                depth -= 1
                if depth == 0:
                    k += 1
                    break
            elif text[k] == ";" and depth == 0:
                k += 1
                break
            k += 1
        out.append("\n" * text.count("\n", m.start(), k))
        i = k
    out.append(text[i:])
    return "".join(out)


def module_of(path, src):
    """`src/a/b.rs` -> ('a', 'b'); `src/a/mod.rs` -> ('a',); `src/lib.rs` -> ()."""
    rel = path.relative_to(src).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib"):
        parts.pop()
    return tuple(parts)


def expand_use_tree(tree):
    """`a::{b, c::{d, e}, self}` -> [['a','b'], ['a','c','d'], ['a','c','e'], ['a']]."""
    tree = re.sub(r"\s+", "", tree)
    tree = re.sub(r"\bas" + IDENT, "", tree)  # `as x` once spaces are gone reads `asx`

    def split_top(s):
        parts, depth, cur = [], 0, ""
        for ch in s:
            if ch == "{":
                depth += 1
            elif ch == "}":
                depth -= 1
            if ch == "," and depth == 0:
                parts.append(cur)
                cur = ""
            else:
                cur += ch
        if cur:
            parts.append(cur)
        return parts

    def walk(prefix, s):
        brace = s.find("{")
        if brace < 0:
            segs = [x for x in s.split("::") if x]
            if segs and segs[-1] == "self":
                segs.pop()
            return [prefix + segs]
        head = [x for x in s[:brace].split("::") if x]
        inner = s[brace + 1:s.rfind("}")]
        result = []
        for part in split_top(inner):
            result.extend(walk(prefix + head, part))
        return result

    return walk([], tree)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default=None, help="the src directory (default: ../src from here)")
    ap.add_argument("--edges", action="store_true", help="print every edge")
    ap.add_argument("--tests", action="store_true", help="count #[cfg(test)] code too")
    args = ap.parse_args()
    src = Path(args.src) if args.src else Path(__file__).resolve().parent.parent / "src"

    files = {}
    for p in sorted(src.rglob("*.rs")):
        if p.name == "main.rs" and p.parent == src:
            continue  # the binary: it sees the library from outside
        files[module_of(p, src)] = p
    modules = set(files)

    def resolve(segs):
        """The module (a key of `files`) of the longest prefix of `segs`."""
        for k in range(len(segs), -1, -1):
            if tuple(segs[:k]) in modules:
                return tuple(segs[:k])
        return ()

    edges = {}  # (from, to) -> set of names used
    for mod, path in files.items():
        text = strip_comments_and_strings(path.read_text(encoding="utf-8"))
        if not args.tests:
            text = strip_cfg_test(text)
        children = {m[-1] for m in modules if len(m) == len(mod) + 1 and m[:-1] == mod}
        paths = []
        for m in re.finditer(r"\buse\s+([^;]+);", text):
            paths.extend(expand_use_tree(m.group(1)))
        # Inline paths: `crate::a::b`, `super::a`, and `child::x` for a child module.
        used_spans = [m.span() for m in re.finditer(r"\buse\s+([^;]+);", text)]

        def in_use(pos):
            return any(a <= pos < b for a, b in used_spans)

        for m in re.finditer(r"(?<![A-Za-z0-9_:])((?:" + IDENT + r"::)+" + IDENT + ")", text):
            if not in_use(m.start()):
                paths.append(m.group(1).split("::"))
        for segs in paths:
            if not segs:
                continue
            if segs[0] == "crate":
                target = resolve(segs[1:])
            elif segs[0] in ("super", "self"):
                base = list(mod)
                # In `a/b.rs` (module a::b), `super` is `a`; `self` is `a::b`.
                while segs and segs[0] in ("super", "self"):
                    if segs[0] == "super":
                        base = base[:-1]
                    segs = segs[1:]
                target = resolve(base + segs)
            elif segs[0] in children:
                target = resolve(list(mod) + segs)
            else:
                continue
            if target != mod:
                name = "::".join(segs)
                edges.setdefault((mod, target), set()).add(name)

    def fname(m):
        return str(files[m].relative_to(src.parent))

    graph = {m: sorted({b for (a, b) in edges if a == m}) for m in files}
    if args.edges:
        for (a, b) in sorted(edges, key=lambda e: (fname(e[0]), fname(e[1]))):
            print(f"{fname(a)} -> {fname(b)}")

    # Tarjan's strongly connected components.
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def strong(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            sccs.append(comp)

    sys.setrecursionlimit(10000)
    for v in files:
        if v not in index:
            strong(v)
    cycles = [sorted(c, key=fname) for c in sccs if len(c) > 1]
    cycles.sort(key=lambda c: fname(c[0]))
    print(f"{len(files)} files, {len(edges)} edges, {len(cycles)} groups of files in a cycle")
    for comp in cycles:
        members = set(comp)
        print(f"\ncycle group of {len(comp)}: " + ", ".join(fname(m) for m in comp))
        for a in comp:
            for b in graph[a]:
                if b in members:
                    mutual = " (both ways)" if a in graph[b] else ""
                    names = ", ".join(sorted(edges[(a, b)])[:4])
                    more = len(edges[(a, b)]) - 4
                    names += f", +{more}" if more > 0 else ""
                    print(f"  {fname(a)} -> {fname(b)}{mutual}: {names}")
    return 1 if cycles else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # piped into `head`
        sys.exit(1)
