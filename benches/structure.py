#!/usr/bin/env python3
"""Structure figures for bucketgate (benches/structure.py): src lines per top-level module, the module import graph
(`use crate::` and `crate::` paths), back-arrows against the intended layering, and the longest
functions of src/pipeline/mod.rs.  Usage: structure.py [REPO]"""
import os, re, sys
from collections import defaultdict
repo = sys.argv[1] if len(sys.argv) > 1 else "."
src = os.path.join(repo, "src")
def module_of(path):
    rel = os.path.relpath(path, src)
    top = rel.split(os.sep)[0]
    return top[:-3] if top.endswith(".rs") else top
lines = defaultdict(int); tests = defaultdict(int); edges = defaultdict(set)
for root, _, files in os.walk(src):
    for f in files:
        if not f.endswith(".rs"): continue
        p = os.path.join(root, f); m = module_of(p)
        text = open(p).read()
        n = text.count("\n"); lines[m] += n
        # the graph is of production code: a unit-test module may name anything
        cut = text.find("#[cfg(test)]\nmod tests")
        if cut < 0: cut = text.find("#[cfg(test)]\n#[allow(clippy::unwrap_used)]")
        if cut >= 0: text = text[:cut]
        # crate:: paths, including grouped `use crate::{a, b::c}`
        for mm in re.finditer(r"crate::\{([^}]*)\}", text):
            for part in re.split(r"[,\s]+", mm.group(1)):
                t = part.split("::")[0].strip("{} ")
                if t and t != m and t != "self": edges[m].add(t)
        for mm in re.finditer(r"crate::([a-z_]+)", text):
            t = mm.group(1)
            if t != m: edges[m].add(t)
mods = sorted(lines, key=lambda k: -lines[k])
print("## src lines per top-level module")
for m in mods: print(f"{m:14} {lines[m]:6}")
print(f"{'total':14} {sum(lines.values()):6}")
print("\n## imports (module -> modules it names via crate::)")
for m in sorted(edges):
    print(f"{m:14} -> {', '.join(sorted(edges[m]))}")
# cycles: strongly connected components
idx = {}; low = {}; stack = []; on = set(); sccs = []; c = [0]
def visit(v):
    idx[v] = low[v] = c[0]; c[0] += 1; stack.append(v); on.add(v)
    for w in edges.get(v, ()):
        if w not in idx: visit(w); low[v] = min(low[v], low[w])
        elif w in on: low[v] = min(low[v], idx[w])
    if low[v] == idx[v]:
        comp = []
        while True:
            w = stack.pop(); on.discard(w); comp.append(w)
            if w == v: break
        if len(comp) > 1: sccs.append(sorted(comp))
sys.setrecursionlimit(10000)
for v in list(lines): 
    if v not in idx: visit(v)
print("\n## import cycles (strongly connected components with more than one module)")
print("\n".join(" <-> ".join(s) for s in sccs) or "none: the graph is a DAG")
low_mods = ["state","backend","credentials","identity","saml","cache","preprocess","audit","config","aws","scope","web","civil_time","telemetry","tokens"]
high = ["pipeline","server","admin","app","reload","main"]
bad = [(m, t) for m in edges for t in edges[m] if m in low_mods and t in high]
print("\n## back-arrows (a lower module naming pipeline, server, admin, app, reload)")
print("\n".join(f"{m} -> {t}" for m, t in sorted(bad)) or "none")
# longest functions in pipeline/mod.rs
p = os.path.join(src, "pipeline", "mod.rs")
text = open(p).read().split("\n"); fns = []
for i, l in enumerate(text):
    mm = re.match(r"\s*(pub(\([a-z]+\))?\s+)?(async\s+)?fn\s+([a-z_0-9]+)", l)
    if not mm: continue
    depth = 0; started = False
    for j in range(i, len(text)):
        depth += text[j].count("{") - text[j].count("}")
        if "{" in text[j]: started = True
        if started and depth <= 0: fns.append((j - i + 1, mm.group(4), i + 1)); break
        if not started and text[j].rstrip().endswith(";"): break
fns.sort(reverse=True)
print("\n## longest functions in src/pipeline/mod.rs (lines, name, line)")
for n, name, at in fns[:5]: print(f"{n:5} {name} (:{at})")
