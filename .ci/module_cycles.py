#!/usr/bin/env python3
"""No import loop between the top-level modules of a crate.

For the agent and the server, every `crate::<module>` named in code (comments and `#[cfg(test)]`
blocks left out) is an edge from the module of the file to that module; any cycle between two or
more top-level modules fails, with the lines that make it.
"""
import os
import re
import sys

CRATES = ["agent/src", "server/src", "common/src"]


def modules(root):
    out = {}
    for name in sorted(os.listdir(root)):
        if name in ("lib.rs", "main.rs"):
            continue
        path = os.path.join(root, name)
        if name.endswith(".rs"):
            out[name[:-3]] = [path]
        elif os.path.isdir(path):
            out[name] = sorted(
                os.path.join(d, f) for d, _, fs in os.walk(path) for f in fs if f.endswith(".rs")
            )
    return out


def edges(mods):
    graph = {m: {} for m in mods}
    for m, files in mods.items():
        for f in files:
            in_test = False
            with open(f, encoding="utf-8") as fh:
                for n, line in enumerate(fh, 1):
                    s = line.strip()
                    if s.startswith("//"):
                        continue
                    if "#[cfg(test)]" in s:
                        in_test = True  # test modules sit at the end of a file
                    if in_test:
                        continue
                    for target in re.findall(r"crate::(\w+)", line):
                        if target in graph and target != m:
                            graph[m].setdefault(target, f"{f}:{n}")
    return graph


def cycles(graph):
    index, low, stack, on, found, counter = {}, {}, [], set(), [], [0]

    def visit(v):
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph[v]:
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
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def main():
    fail = False
    for root in CRATES:
        graph = edges(modules(root))
        for comp in cycles(graph):
            fail = True
            print(f"structure: import loop in {root} between {', '.join(comp)}:", file=sys.stderr)
            for a in comp:
                for b, where in sorted(graph[a].items()):
                    if b in comp:
                        print(f"  {a} -> {b}  ({where})", file=sys.stderr)
    return 1 if fail else 0


if __name__ == "__main__":
    sys.exit(main())
