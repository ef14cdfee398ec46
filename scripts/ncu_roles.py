#!/usr/bin/env python3
"""Where the warps of a warp-specialized kernel stall, by role.

Reads the CSV that `ncu --import REPORT --page source --csv --print-source sass`
writes (scripts/gpu_attention.sh, step `source`, packs one per kernel and head
dim) and splits each kernel's sampled warp stalls into its set-up (before the
first `setmaxnreg`), its consumer code and its producer code (the two regions
`setmaxnreg` opens), then classifies each region's samples by instruction:
waiting for a ring slot (an mbarrier try-wait loop), waiting for wgmma, issuing
wgmma, exp2 (MUFU), other float math, and the rest (integer, control, memory).

With --lines N it also prints, per kernel, the N source lines where the
consumer warps spend most samples, and each line's "other" share (integer,
control, memory). That needs the build's source-line tables (bazel build
--config=lineinfo) and the `--print-source cuda,sass` export of the same
report beside each CSV, named X.lines.csv for X.csv (gpu_attention.sh writes
both).

Usage: scripts/ncu_roles.py [--lines N] src_forward_ws_64.csv [...]
"""
import collections
import csv
import os
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


def source_lines(path):
    """{SASS address: (source file, line)} from a `--print-source cuda,sass` CSV:
    per file, a row with a line number opens that line's instructions."""
    where, src, line = {}, None, None
    for r in csv.reader(open(path)):
        if not r or r[0] in ("Function Name", "Line No"):
            continue
        if r[0] == "File Path":
            src = os.path.basename(r[1])
        elif r[0]:
            line = int(r[0]) if r[0].isdigit() else None
        elif len(r) > 3 and r[2].startswith("0x") and line is not None:
            where[r[2]] = (src, line)
    return where


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
    args, top = sys.argv[1:], 0
    if len(args) > 1 and args[0] == "--lines":
        top, args = int(args[1]), args[2:]
    for path in args:
        lines_csv = path[:-4] + ".lines.csv"
        where = source_lines(lines_csv) if top and os.path.exists(lines_csv) else {}
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
            by_line = collections.defaultdict(collections.Counter)
            for i, r in enumerate(rows):
                n = samples(r)
                if n:
                    ro = role(i)
                    k = share.setdefault(ro, {})
                    c = kind(r[1].strip(), long_sb(r) / n)
                    k[c] = k.get(c, 0) + n
                    if ro == "consumer":
                        by_line[where.get(r[0], ("?", 0))][c] += n
            print(name[:110])
            for ro in ("set-up", "consumer", "producer"):
                d = share.get(ro, {})
                t = sum(d.values()) or 1
                print(f"  {ro:9s} {100 * t / total:5.1f}% of samples: " +
                      ", ".join(f"{k} {100 * d.get(k, 0) / t:.1f}%" for k in kinds))
            if top and not where:
                print(f"  (no source lines: {lines_csv} missing or built without --config=lineinfo)")
            elif top:
                t = sum(share.get("consumer", {}).values()) or 1
                print("  consumer samples by source line (share, of it integer/control/memory):")
                for (src, line), c in sorted(by_line.items(), key=lambda kv: -sum(kv[1].values()))[:top]:
                    n = sum(c.values())
                    print(f"    {100 * n / t:5.1f}% ({100 * c['other'] / t:4.1f}%)  {src}:{line}")


if __name__ == "__main__":
    main()
