#!/usr/bin/env python3
"""Counts the pairs of places sharing six or more lines of the same shape (the `duplicates`
tool of the tool library) past that tool's 100-pair cap: the pairs within each part of the tree,
plus, for every two parts, the pairs of their union minus each part's own. Usage:
`.ci/duplicate-pairs.py <checkout>` (prints the parts, the cross pairs and TOTAL)."""
import subprocess, sys, os, tempfile, shutil, re, itertools
root = sys.argv[1]
files = subprocess.run(['git', 'ls-files'], cwd=root, capture_output=True, text=True).stdout.split()
files = [f for f in files if f.endswith(('.rs', '.sh', '.toml', '.yaml', '.tpl')) and not f.startswith(('fixtures/', 'deploy/', 'charts/'))]
def part(f):
    c = f.split('/')
    if c[0] == 'crates':
        return '/'.join(c[:4]) if len(c) > 4 else '/'.join(c[:3])
    if c[0] == 'src':
        return '/'.join(c[:2]) if len(c) > 2 else 'src'
    return c[0]
parts = {}
for f in files:
    parts.setdefault(part(f), []).append(f)
work = tempfile.mkdtemp()
def materialize(names, dest):
    for n in names:
        for f in parts[n]:
            d = os.path.join(dest, f)
            os.makedirs(os.path.dirname(d), exist_ok=True)
            shutil.copy(os.path.join(root, f), d)
def count(names):
    d = tempfile.mkdtemp(dir=work)
    materialize(names, d)
    out = subprocess.run(['duplicates', '--repo', d, '--seconds', '60', '--most', '1'], capture_output=True, text=True).stdout
    m = re.match(r'(\d+) pairs', out)
    if 'incomplete' in out: print('INCOMPLETE', names, file=sys.stderr)
    return int(m.group(1)) if m else 0
w = {n: count([n]) for n in parts}
total = sum(w.values())
for a, b in itertools.combinations(sorted(parts), 2):
    u = count([a, b])
    if u >= 100: print('CAPPED', a, b, file=sys.stderr)
    c = u - w[a] - w[b]
    total += c
    if c: print("cross", a, b, c)
print('within:', {k: v for k, v in w.items() if v})
print('TOTAL', total)
shutil.rmtree(work)
