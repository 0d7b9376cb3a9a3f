#!/usr/bin/env python3
"""Prints a kernel's SASS with the control bits of each instruction decoded: stall cycles, the scoreboard
its result is written to (W), the one its operands are read through (R), and the scoreboards it waits for.

What it is for: seeing, without a GPU, how ptxas scheduled the loads of a kernel (how many are in flight
before the math starts, and whether a wait for one batch of loads also covers the next batch's: a wait
covers every load on that scoreboard). Volta and newer (the 128-bit encoding: the control bits are the top
23 bits of the second 64-bit word).

    ptxas -arch=sm_90a -o k.cubin awq_gemm.ptx     # the PTX of target/*/build/awq-kernels-*/out/
    cuobjdump -sass k.cubin > k.sass               # cuobjdump: CUDA toolkit (pip: nvidia-cuda-cuobjdump-cu12)
    scripts/sass_ctrl.py k.sass awq_swapdb_f16_nt1_sw2_cb4 | grep -E "LDG|HMMA|WARPSYNC|wait=\\[[0-9]"
"""
import re
import sys


def decode(path, kernel):
    on, pending, out = False, None, []
    for line in open(path):
        m = re.match(r"\s+Function : (\S+)", line)
        if m:
            on = m.group(1) == kernel
            continue
        if not on:
            continue
        m = re.match(r"\s+/\*([0-9a-f]{4,})\*/\s+(.*?);\s+/\* (0x[0-9a-f]+) \*/", line)
        if m:
            pending = (m.group(1), m.group(2))
            continue
        m = re.match(r"\s+/\* (0x[0-9a-f]+) \*/", line)
        if m and pending:
            ctrl = int(m.group(1), 16) >> 41
            out.append((*pending, ctrl & 0xF, (ctrl >> 5) & 7, (ctrl >> 8) & 7, (ctrl >> 11) & 0x3F))
            pending = None
    return out


def main():
    if len(sys.argv) != 3:
        sys.exit(__doc__)
    rows = decode(sys.argv[1], sys.argv[2])
    if not rows:
        sys.exit(f"no kernel {sys.argv[2]} in {sys.argv[1]}")
    for addr, text, stall, wb, rb, wait in rows:
        waits = ",".join(str(i) for i in range(6) if wait >> i & 1)
        w = "-" if wb == 7 else wb
        r = "-" if rb == 7 else rb
        print(f"{addr} {text[:72]:72s} stall={stall:2d} W={w} R={r} wait=[{waits}]")


if __name__ == "__main__":
    main()
