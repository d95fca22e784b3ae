#!/usr/bin/env python3
"""Checks the layering of `src/`: no import loops between modules, and no oversized files.

A module is one source file (`src/a/b.rs` or `src/a/b/mod.rs` is `crate::a::b`). Module A
imports module B when A's code names a path into B (`use crate::b::X`, `crate::b::f()`,
`super::X`, `use crate::{b::X, c}`), resolved to the deepest module file that exists. A
parent naming its child is an import like any other; merely declaring `mod child;` is not.

Every strongly connected component of more than one module is a loop and fails the check,
printed with one import edge of each module in it. Files over the line limit fail too,
unless they are listed in ALLOWED_LONG with the reason.

    python3 .ci/layering.py [--graph] [src_dir ...]   (default: src and crates/*/src)

Each source folder is one crate, checked on its own (Cargo already forbids loops between
crates).
"""

import re
import sys
from pathlib import Path

MAX_LINES = 500
MAX_FN_LINES = 80
# "file::function" -> why it may be longer.
ALLOWED_LONG_FN = {}
# file -> why it may be longer (keep this short; a reason is required).
ALLOWED_LONG = {}


def module_of(path: Path, root: Path) -> tuple:
    rel = path.relative_to(root).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] in ("mod", "lib", "main"):
        parts = parts[:-1]
    return tuple(parts)


def strip_comments(text: str) -> str:
    # A file's unit tests (`#[cfg(test)] mod tests`, at the end by convention) name their
    # parent through `super::`; they are not part of the module's imports.
    cut = re.search(r"#\[cfg\(test\)\]\s*mod tests\b", text)
    if cut:
        text = text[: cut.start()]
    text = re.sub(r"/\*.*?\*/", "", text, flags=re.S)
    text = re.sub(r"//[^\n]*", "", text)
    text = re.sub(r'"(?:\\.|[^"\\])*"', '""', text)
    return text


def expand_use(tree: str) -> list:
    """`a::{b, c::{d, e}}` -> ['a::b', 'a::c::d', 'a::c::e']."""
    tree = tree.strip()
    m = re.match(r"^(.*?)\{(.*)\}$", tree, flags=re.S)
    if not m:
        return [re.sub(r"\s+as\s+\w+$", "", tree).strip()]
    prefix, inner = m.group(1), m.group(2)
    items, depth, cur = [], 0, ""
    for ch in inner:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
        if ch == "," and depth == 0:
            items.append(cur)
            cur = ""
        else:
            cur += ch
    items.append(cur)
    out = []
    for it in items:
        if it.strip():
            for sub in expand_use(it):
                out.append(prefix + sub)
    return out


def paths_in(text: str) -> list:
    paths = []
    for m in re.finditer(r"\buse\s+([^;]+);", text):
        paths.extend(expand_use(m.group(1)))
    body = re.sub(r"\buse\s+[^;]+;", "", text)
    for m in re.finditer(r"\b((?:crate|super|self)(?:::\w+)+)", body):
        paths.append(m.group(1))
    return paths


def resolve(path: str, here: tuple, is_dir_module: bool, modules: set):
    segs = [s for s in path.replace(" ", "").split("::") if s]
    if not segs:
        return None
    base = list(here) if is_dir_module else list(here[:-1])
    if segs[0] == "crate":
        cur, segs = [], segs[1:]
    elif segs[0] == "self":
        cur, segs = list(here), segs[1:]
    elif segs[0] == "super":
        cur = base
        segs = segs[1:]
        while segs and segs[0] == "super":
            cur = cur[:-1]
            segs = segs[1:]
    else:
        return None
    best = tuple(cur)
    for s in segs:
        cand = tuple(cur + [s])
        if cand in modules:
            cur.append(s)
            best = cand
        else:
            break
    return best


def long_functions(text: str):
    """(name, lines) of every `fn` whose body closes at the indentation it opened at."""
    lines = text.split("\n")
    out = []
    for i, line in enumerate(lines):
        m = re.match(r"^(\s*)(?:pub(?:\([\w:]+\))?\s+)?(?:const\s+)?(?:unsafe\s+)?(?:extern\s+\"C\"\s+)?fn\s+(\w+)", line)
        if not m:
            continue
        indent = m.group(1)
        # the body starts at the first line ending in `{` from here; a `;` first is a declaration
        j = i
        while j < len(lines) and not lines[j].rstrip().endswith("{"):
            if lines[j].rstrip().endswith(";"):
                j = None
                break
            j += 1
        if j is None or j >= len(lines):
            continue
        k = j + 1
        while k < len(lines) and lines[k] != indent + "}":
            k += 1
        out.append((m.group(2), k - i + 1))
    return out


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    roots = [Path(a) for a in args] or [Path("src")] + sorted(Path("crates").glob("*/src"))
    failed = 0
    for root in roots:
        print(f"== {root}")
        failed |= check(root, "--graph" in sys.argv)
    return failed


def check(root: Path, show_graph: bool) -> int:
    files = sorted(p for p in root.rglob("*.rs") if p.name != "main.rs" and "bin" not in p.parts)
    modules = {module_of(p, root): p for p in files}
    edges = {m: {} for m in modules}
    failed = False

    for m, p in modules.items():
        text = strip_comments(p.read_text())
        is_dir = p.name in ("mod.rs", "lib.rs")
        for path in paths_in(text):
            target = resolve(path, m, is_dir, set(modules))
            if target is None or target == m:
                continue
            # `pub use`/`use` of an ancestor's item is still an import of that ancestor;
            # an empty tuple is the crate root (lib.rs), which only declares modules.
            if target == ():
                continue
            edges[m].setdefault(target, path)

    # Tarjan's strongly connected components.
    index, low, on, stack, sccs, counter = {}, {}, set(), [], [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
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
    for v in modules:
        if v not in index:
            visit(v)

    name = lambda m: "::".join(m) or "crate"
    for comp in sccs:
        if len(comp) > 1:
            failed = True
            members = set(comp)
            print(f"import loop between {len(comp)} modules:")
            for v in sorted(comp):
                for w, via in sorted(edges[v].items()):
                    if w in members:
                        print(f"  {name(v)} -> {name(w)}   ({via})")

    for m, p in modules.items():
        n = sum(1 for _ in p.open())
        rel = str(p.relative_to(root))
        if n > MAX_LINES and rel not in ALLOWED_LONG:
            failed = True
            print(f"{rel}: {n} lines (limit {MAX_LINES}; split it or list it in ALLOWED_LONG with the reason)")

    for m, p in modules.items():
        rel = str(p.relative_to(root))
        if p.name == "tests.rs":
            continue
        text = p.read_text()
        cut = re.search(r"#\[cfg\(test\)\]\s*mod tests\b", text)
        # Unit tests are often tables of cases: they are not held to the function limit.
        for name, n in long_functions(text[: cut.start()] if cut else text):
            key = f"{rel}::{name}"
            if n > MAX_FN_LINES and key not in ALLOWED_LONG_FN:
                failed = True
                print(f"{key}: {n} lines (limit {MAX_FN_LINES}; split it or list it in ALLOWED_LONG_FN with the reason)")

    if show_graph:
        for v in sorted(modules):
            print(f"{name(v)}: {', '.join(sorted(name(w) for w in edges[v]))}")
    if not failed:
        print(f"layering: {len(modules)} modules, no import loops, no file over {MAX_LINES} lines "
              f"(except {', '.join(sorted(ALLOWED_LONG)) or 'none'}), no function over "
              f"{MAX_FN_LINES} lines (except {', '.join(sorted(ALLOWED_LONG_FN)) or 'none'})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
