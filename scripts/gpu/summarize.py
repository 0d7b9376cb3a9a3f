"""Joins the `RESULT {json}` lines of our GPU benches and the torch peer into markdown tables.

AWQ rows ("auto" is what a model runs: the autotuner's choice, in brackets; the other paths are the
candidates forced, `stream|pipe/spread|balanced` for decode, `dequant-<kernel>+gemm` for large M): weight bytes = int4 codes (N*K/2) + zero points (N*K/G/2) + f16 scales (N*K/G*2), the bytes a
kernel must read at least; TB/s of those bytes, the fraction of the copy bandwidth measured in the same run
(bytes read + written), TFLOP/s (2*M*N*K), and the speedup over cuBLAS fp16 on the same shape.

Row-kernel rows (awq-kernels/benches/rowwise_gpu.rs): bytes read + written per second against the copy bandwidth,
next to torch's own op on the same shape ("torch_row"); the one-row cells are launch-bound (the decode step).

Attention rows (awq-kernels/benches/attention_gpu.rs): TFLOP/s (4*h*d*query-key pairs), KV TB/s (keys and
values read once) and its fraction of the copy bandwidth, next to torch SDPA on the same case as called
("sdpa": its default backend; the issue's peer), and the fastest torch way of all (that, K/V repeated:
"sdpa_expanded", each backend forced: "sdpa:flash", "sdpa:cudnn", ...), named; speedup = torch time / ours.
"""
import json
import sys

GROUP = 128


def results(path):
    rows = []
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("RESULT "):
                    try:
                        rows.append(json.loads(line[len("RESULT "):]))
                    except json.JSONDecodeError:
                        pass
    except OSError:
        pass
    return rows


def main():
    gpu_file, *logs = sys.argv[1:]
    rows = [r for log in logs for r in results(log)]
    try:
        card = open(gpu_file).read().strip().splitlines()[-1]
    except (OSError, IndexError):
        card = "unknown card"
    copy = [r for r in rows if r.get("impl") == "copy"]
    copy_tbs = copy[0]["bytes_moved"] / copy[0]["us"] / 1e6 if copy else float("nan")
    peer = {(r["k"], r["n"], r["m"]): r["us"] for r in rows if r.get("impl") == "cublas_f16"}
    print(f"Card: {card}")
    print(f"Copy bandwidth (read + written): {copy_tbs:.2f} TB/s\n")
    print("| K x N | M | dtype | path | AWQ us | weight TB/s | % of copy | TFLOP/s | cuBLAS fp16 us | cuBLAS TFLOP/s | speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    ours = (r for r in rows if str(r.get("impl", "")).startswith("awq"))
    for r in sorted(ours, key=lambda r: (r["k"], r["n"], r["dtype"], r["m"], r["impl"])):
        k, n, m, us = r["k"], r["n"], r["m"], r["us"]
        wbytes = n * k / 2 + n * k / GROUP / 2 + n * k / GROUP * 2
        tbs = wbytes / us / 1e6
        tflops = 2 * m * n * k / us / 1e6
        p = peer.get((k, n, m))
        ptf = 2 * m * n * k / p / 1e6 if p else float("nan")
        speed = p / us if p else float("nan")
        impl = r["impl"]
        if impl == "awq":
            path = f"auto ({r['variant']})" if r.get("variant") else "auto"
        elif impl.startswith("awq_v:"):
            path = impl[len("awq_v:"):]
        else:
            path = {"awq_stream": "stream", "awq_pipe": "pipe (cp.async)", "awq_dequant_gemm": "dequant+cuBLAS"}.get(impl, impl)
        print(f"| {k} x {n} | {m} | {r['dtype']} | {path} | {us:.1f} | {tbs:.2f} | {100 * tbs / copy_tbs:.0f}% | {tflops:.0f} | "
              f"{p if p else float('nan'):.1f} | {ptf:.0f} | {speed:.2f}x |")

    attention_table(rows, copy_tbs)
    row_table(rows, copy_tbs)


def attention_table(rows, copy_tbs):
    ours = [r for r in rows if r.get("impl") in ("flash", "flash_paged", "decode") or str(r.get("impl")).startswith("flash/")]
    if not ours:
        return

    def key(r):
        return (r["case"], r["b"], r["ctx"], r["dtype"])

    # The peer the issue names is SDPA as called (its default backend, with enable_gqa): "sdpa"; beside it the
    # fastest torch way of all ("sdpa_expanded", each backend forced), named.
    default, best = {}, {}
    for r in rows:
        impl = str(r.get("impl", ""))
        if impl.startswith("sdpa"):
            k = key(r)
            if impl == "sdpa":
                default[k] = r
            if k not in best or r["us"] < best[k]["us"]:
                best[k] = r
    print("\n| case | kernel | b | ctx | h / h_kv | dtype | us | TFLOP/s | KV TB/s | % of copy | SDPA us | SDPA TFLOP/s "
          "| speedup | fastest torch | its us | speedup |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    nan = float("nan")
    for r in sorted(ours, key=lambda r: (r["case"], r["b"], r["ctx"], r["dtype"], r["impl"])):
        d, b = default.get(key(r)), best.get(key(r))
        dus, dtf = (d["us"], d["tflops"]) if d else (nan, nan)
        bus = b["us"] if b else nan
        extra = f" ({r['splits']} splits)" if "splits" in r else (f" (tile {r['tile']})" if "tile" in r else "")
        print(f"| {r['case']} | {r['impl']}{extra} | {r['b']} | {r['ctx']} | {r['h']} / {r['h_kv']} | {r['dtype']} | "
              f"{r['us']:.1f} | {r['tflops']:.0f} | {r['kv_tbps']:.2f} | {100 * r['kv_tbps'] / copy_tbs:.0f}% | "
              f"{dus:.1f} | {dtf:.0f} | {dus / r['us']:.2f}x | {b['impl'] if b else '-'} | {bus:.1f} | "
              f"{bus / r['us']:.2f}x |")


def row_table(rows, copy_tbs):
    ours = [r for r in rows if r.get("impl") == "row"]
    if not ours:
        return
    peer = {(r["op"], r["shape"]): r["us"] for r in rows if r.get("impl") == "torch_row"}
    print("\n| row op | shape | dtype | us | TB/s (read + written) | % of copy | torch us | speedup |")
    print("|---|---|---|---|---|---|---|---|")
    for r in ours:
        p = peer.get((r["op"], r["shape"]))
        pus = p if p else float("nan")
        print(f"| {r['op']} | {r['shape']} | {r['dtype']} | {r['us']:.1f} | {r['tbps']:.2f} | "
              f"{100 * r['tbps'] / copy_tbs:.0f}% | {pus:.1f} | {pus / r['us']:.2f}x |")


if __name__ == "__main__":
    main()
