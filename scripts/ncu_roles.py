#!/usr/bin/env python3
"""Where the warps of a warp-specialized kernel stall, by role.

Reads the CSV that `ncu --import REPORT --page source --csv --print-source sass`
writes (scripts/gpu_attention.sh, step `source`, packs one per kernel and head
dim) and splits each kernel's sampled warp stalls into its set-up (before the
first `setmaxnreg`), its consumer code and its producer code (the two regions
`setmaxnreg` opens), then classifies each region's samples by instruction:
waiting for a ring slot (an mbarrier try-wait loop), waiting for wgmma, issuing
wgmma, exp2 (MUFU), other float math, and the rest (integer, control, memory).

Usage: scripts/ncu_roles.py src_forward_ws_64.csv [...]
"""
import csv
import re
import sys


def kernels(path):
    """(kernel name, header, rows) for each kernel in the CSV."""
    out, name, hdr, rows = [], None, None, []
    for r in csv.reader(open(path)):
        if r and r[0] == "Kernel Name":
            if rows:
                out.append((name, hdr, rows))
            name, rows = r[1], []
        elif len(r) > 3 and r[0] == "Address":
            hdr = r
        elif hdr and len(r) == len(hdr) and r[0].startswith("0x"):
            rows.append(r)
    if rows:
        out.append((name, hdr, rows))
    seen, unique = set(), []
    for k in out:  # the page repeats a kernel once per profiled launch
        if k[0] not in seen:
            seen.add(k[0])
            unique.append(k)
    return unique


def kind(sass, long_sb_share):
    op = re.sub(r"^@!?U?P\w+\s+", "", sass).split()[0]
    if op == "BRA" and long_sb_share > 0.5:
        return "slot wait"  # the try-wait loop's branch carries the stall
    if op.startswith("WARPGROUP.DEPBAR"):
        return "wgmma wait"
    if op.startswith(("HGMMA", "WARPGROUP")):
        return "wgmma issue"
    if op.startswith("MUFU"):
        return "exp2 (MUFU)"
    if op.startswith(("FMNMX", "FADD", "FMUL", "FFMA", "F2FP", "FSEL", "FSETP")):
        return "float math"
    return "other"


def main():
    kinds = ["slot wait", "wgmma wait", "wgmma issue", "exp2 (MUFU)", "float math", "other"]
    for path in sys.argv[1:]:
        for name, hdr, rows in kernels(path):
            col = {h: i for i, h in enumerate(hdr)}
            samples = lambda r: int(r[col["Warp Stall Sampling (All Samples)"]])
            long_sb = lambda r: int(r[col["stall_long_sb"]])
            total = sum(samples(r) for r in rows) or 1
            alloc = [i for i, r in enumerate(rows) if "TRY_ALLOC" in r[1]]
            dealloc = [i for i, r in enumerate(rows) if "DEALLOC" in r[1]]
            if not alloc or not dealloc:
                print(f"{name[:90]}: no setmaxnreg regions")
                continue
            first = min(alloc[0], dealloc[0])

            def role(i):
                if i < first:
                    return "set-up"
                lo, hi = sorted((alloc[0], dealloc[0]))
                inner = "consumer" if lo == alloc[0] else "producer"
                outer = "producer" if inner == "consumer" else "consumer"
                return inner if i < hi else outer

            share = {}
            for i, r in enumerate(rows):
                n = samples(r)
                if n:
                    k = share.setdefault(role(i), {})
                    c = kind(r[1].strip(), long_sb(r) / n)
                    k[c] = k.get(c, 0) + n
            print(name[:110])
            for ro in ("set-up", "consumer", "producer"):
                d = share.get(ro, {})
                t = sum(d.values()) or 1
                print(f"  {ro:9s} {100 * t / total:5.1f}% of samples: " +
                      ", ".join(f"{k} {100 * d.get(k, 0) / t:.1f}%" for k in kinds))


if __name__ == "__main__":
    main()
