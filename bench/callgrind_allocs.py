#!/usr/bin/env python3
# Sums the calls into mimalloc's allocation entry points in a raw callgrind dump; prints calls per request.
# usage: python3 bench/callgrind_allocs.py <callgrind.out> <requests>
import re, sys
names = {}
total = 0
want = re.compile(r"^(mi_malloc_aligned|mi_zalloc_aligned|mi_realloc_aligned)$")
cur_cfn = None
for line in open(sys.argv[1], errors="replace"):
    m = re.match(r"^c?fn=\((\d+)\)(?: (.*))?$", line.rstrip("\n"))
    if m:
        fid, name = m.group(1), m.group(2)
        if name is not None:
            names[fid] = name
        if line.startswith("cfn="):
            cur_cfn = names.get(fid)
        continue
    if line.startswith("calls=") and cur_cfn is not None:
        if want.match(cur_cfn):
            total += int(line.split("=")[1].split()[0])
        cur_cfn = None
print(f"{total} allocations, {total / int(sys.argv[2]):.1f} per request")
