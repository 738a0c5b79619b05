#!/usr/bin/python3
"""Fails when the daemon's files call each other in a circle.

Reads the object files of ivhcore with nm: file A depends on file B when A
uses a symbol B defines. Every strongly connected component of more than one
file is a circle, printed with the calls that make it.

Usage: check-calls.py OBJECT_DIR
"""
import collections
import glob
import os
import subprocess
import sys


def symbols(obj):
    out = subprocess.run(["nm", obj], capture_output=True, text=True, check=True).stdout
    defined, used = set(), set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] in "TDBR":
            defined.add(parts[2])
        elif len(parts) == 2 and parts[0] == "U":
            used.add(parts[1])
    return defined, used


def circles(graph):
    """Tarjan's strongly connected components, iteratively."""
    index, low, on, stack, out, counter = {}, {}, set(), [], [], [0]
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter[0]
        counter[0] += 1
        stack.append(root)
        on.add(root)
        while work:
            v, it = work[-1]
            for w in it:
                if w not in index:
                    index[w] = low[w] = counter[0]
                    counter[0] += 1
                    stack.append(w)
                    on.add(w)
                    work.append((w, iter(sorted(graph[w]))))
                    break
                if w in on:
                    low[v] = min(low[v], index[w])
            else:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[v])
                if low[v] == index[v]:
                    comp = []
                    while True:
                        w = stack.pop()
                        on.discard(w)
                        comp.append(w)
                        if w == v:
                            break
                    if len(comp) > 1:
                        out.append(sorted(comp))
    return out


def main():
    objs = sorted(glob.glob(os.path.join(sys.argv[1], "*.o")))
    if not objs:
        print("no object files in %s" % sys.argv[1])
        return 1
    defined, used = {}, {}
    for o in objs:
        name = os.path.basename(o).split(".")[0] + ".c"
        defined[name], used[name] = symbols(o)
    owner = {s: n for n, d in defined.items() for s in d}
    graph = collections.defaultdict(set)
    calls = collections.defaultdict(set)
    for n in defined:
        graph[n]
        for s in used[n]:
            if s in owner and owner[s] != n:
                graph[n].add(owner[s])
                calls[(n, owner[s])].add(s)
    found = circles(graph)
    for comp in found:
        print("call circle between %s:" % ", ".join(comp))
        for a in comp:
            for b in comp:
                if (a, b) in calls:
                    print("  %s -> %s: %s" % (a, b, ", ".join(sorted(calls[(a, b)]))))
    print("%d files, %d call circle(s)" % (len(defined), len(found)))
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
