"""Quick CPU timing of the `cpu` backend against plain PyTorch, side by side in one process.

    python bench/cpu_quick.py [--threads 2] [--batch 4096] [--reps 7] [--json out.json]

1. masked_linear forward+backward (dx, dW, db) at the paper's MLP shapes, density 0.5:
   cpu backend (packed bits) vs dense nn.Linear (no mask) vs F.linear(x, W * M_float) (the
   prune-style path, a float mask kept and multiplied in forward, autograd masks dW).
2. cross_masked_linear (B, F=20, d=64, N=512) forward+backward: the fused cpu kernel vs the
   unfused path bmm + cat + F.linear with a float mask; plus the bytes autograd saves for
   backward in each (measured with saved_tensors_hooks).
Each path is timed as the minimum over --reps runs after one warm-up, the runs of the compared
paths interleaved so drift hits all alike. Two clocks: wall time, and process CPU time (all
threads, OMP_WAIT_POLICY=PASSIVE so waiting threads sleep): on a shared machine whose other
jobs steal cores, wall time inflates in whole scheduler slices while CPU time still measures
the work done, so compare ratios on both.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time

# Threads that wait at a barrier sleep instead of spinning, so that process CPU time counts
# work, not waiting. Must be set before torch (and its OpenMP runtime) is loaded.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import ncs_kernels as nk  # noqa: E402


def _time(fn, reps):
    fn()  # warm-up (allocator, MKL/oneDNN kernels)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def measure(fns, reps):
    """{name: (min wall ms, min CPU ms)} for callables run interleaved, one warm-up each."""
    for fn in fns.values():
        fn()
    wall = {name: [] for name in fns}
    cpu = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            wall[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    return {name: (min(wall[name]) * 1e3, min(cpu[name]) * 1e3) for name in fns}


def _saved_bytes(fn):
    """Bytes of distinct storages autograd saves for backward while fn() builds its graph."""
    seen = {}

    def pack(t):
        st = t.untyped_storage()
        seen[st.data_ptr()] = st.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(seen.values())


def bench_masked_linear(batch, reps, density=0.5, shapes=((1680, 512), (512, 256), (256, 128))):
    rows = []
    for k, n in shapes:
        gen = torch.Generator().manual_seed(k + n)
        x = torch.randn(batch, k, generator=gen, requires_grad=True)
        dy = torch.randn(batch, n, generator=gen)
        lin = torch.nn.Linear(k, n)
        w = lin.weight.detach().clone().requires_grad_(True)
        b = lin.bias.detach().clone().requires_grad_(True)
        mask = torch.rand(n, k, generator=gen) < density
        packed = nk.pack_mask(mask)
        mfloat = mask.float()

        def run_cpu():
            x.grad = w.grad = b.grad = None
            nk.masked_linear(x, w, packed, b, backend="cpu").backward(dy)

        def run_dense():
            x.grad = lin.weight.grad = lin.bias.grad = None
            lin(x).backward(dy)

        def run_float_mask():
            x.grad = w.grad = b.grad = None
            F.linear(x, w * mfloat, b).backward(dy)

        fns = {"cpu": run_cpu, "dense": run_dense, "float_mask": run_float_mask}
        r = measure(fns, reps)
        row = {"op": "masked_linear fwd+bwd", "shape": f"{batch}x{k}->{n}", "density": density}
        for clock, i in (("wall", 0), ("cpu", 1)):
            row.update({
                f"{clock}_ms": {name: r[name][i] for name in fns},
                f"{clock}_cpu/dense": r["cpu"][i] / r["dense"][i],
                f"{clock}_cpu/float_mask": r["cpu"][i] / r["float_mask"][i],
            })
        rows.append(row)
        print(f"{row['shape']:>16}  wall: cpu {r['cpu'][0]:7.2f} dense {r['dense'][0]:7.2f} float-mask "
              f"{r['float_mask'][0]:7.2f} ms (cpu/dense {row['wall_cpu/dense']:.3f}, cpu/float-mask "
              f"{row['wall_cpu/float_mask']:.3f})   CPU time: cpu {r['cpu'][1]:7.2f} dense {r['dense'][1]:7.2f} "
              f"float-mask {r['float_mask'][1]:7.2f} ms (cpu/dense {row['cpu_cpu/dense']:.3f}, cpu/float-mask "
              f"{row['cpu_cpu/float_mask']:.3f})")
    return rows


def bench_cross(batch, reps, f=20, d=64, n=512, density=0.5):
    k = f * f + f * d
    gen = torch.Generator().manual_seed(7)
    emb = torch.randn(batch, f, d, generator=gen, requires_grad=True)
    w = (torch.randn(n, k, generator=gen) / k ** 0.5).requires_grad_(True)
    b = torch.zeros(n, requires_grad=True)
    mask = torch.rand(n, k, generator=gen) < density
    packed = nk.pack_mask(mask)
    mfloat = mask.float()
    dy = torch.randn(batch, n, generator=gen)

    def fused():
        return nk.cross_masked_linear(emb, w, packed, b, backend="cpu")

    def unfused():
        g = torch.bmm(emb, emb.transpose(1, 2)).reshape(batch, f * f)
        x = torch.cat([g, emb.reshape(batch, f * d)], dim=1)
        return F.linear(x, w * mfloat, b)

    def step(make):
        def run():
            emb.grad = w.grad = b.grad = None
            make().backward(dy)
        return run

    r = measure({"fused_cpu": step(fused), "unfused": step(unfused)}, reps)
    with torch.no_grad():
        rf = measure({"fused_cpu": fused, "unfused": unfused}, reps)
    saved = {name: _saved_bytes(fn)[1] for name, fn in (("fused_cpu", fused), ("unfused", unfused))}
    row = {
        "op": "cross_masked_linear", "shape": f"B={batch} F={f} d={d} N={n}", "density": density,
        "fwd_bwd_ms": {"wall": {k: v[0] for k, v in r.items()}, "cpu": {k: v[1] for k, v in r.items()}},
        "fwd_ms": {"wall": {k: v[0] for k, v in rf.items()}, "cpu": {k: v[1] for k, v in rf.items()}},
        "speedup_fwd_bwd_wall": r["unfused"][0] / r["fused_cpu"][0],
        "speedup_fwd_bwd_cpu": r["unfused"][1] / r["fused_cpu"][1],
        "saved_bytes": saved,
    }
    print(f"cross {row['shape']}: fwd+bwd fused {r['fused_cpu'][0]:.1f} vs unfused {r['unfused'][0]:.1f} ms wall "
          f"({row['speedup_fwd_bwd_wall']:.2f}x), {r['fused_cpu'][1]:.1f} vs {r['unfused'][1]:.1f} ms CPU "
          f"({row['speedup_fwd_bwd_cpu']:.2f}x); fwd only {rf['fused_cpu'][0]:.1f} vs {rf['unfused'][0]:.1f} ms wall; "
          f"saved for backward {saved['fused_cpu'] / 2**20:.1f} MiB vs {saved['unfused'] / 2**20:.1f} MiB")
    return [row]


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--json", default=None, help="write the rows to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if "cpu" not in nk.backends():
        raise SystemExit(f"the cpu backend is not available: {nk.native_error()}")
    print(f"torch {torch.__version__}, {args.threads} threads, {platform.processor() or platform.machine()}, fp32")
    rows = bench_masked_linear(args.batch, args.reps) + bench_cross(args.batch, args.reps)
    if args.json:
        meta = {"torch": torch.__version__, "threads": args.threads, "machine": platform.machine(), "dtype": "float32"}
        with open(args.json, "w") as fh:
            json.dump({"meta": meta, "rows": rows}, fh, indent=2)


if __name__ == "__main__":
    main()
