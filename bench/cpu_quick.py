"""Quick CPU timing of the `cpu` backend against plain PyTorch, side by side in one process.

    python bench/cpu_quick.py [--threads 2] [--batch 4096] [--reps 7] [--json out.json]

1. masked_linear forward+backward (dx, dW, db) at the paper's MLP shapes, density 0.5:
   cpu backend (packed bits) vs dense nn.Linear (no mask) vs F.linear(x, W * M_float) (the
   prune-style path, a float mask kept and multiplied in forward, autograd masks dW).
2. cross_masked_linear (B, F=20, d=64, N=512) forward+backward: the fused cpu kernel vs the
   unfused path bmm + cat + F.linear with a float mask; plus the bytes autograd saves for
   backward in each (measured with saved_tensors_hooks).
Times are the minimum over --reps runs after one warm-up (the most robust statistic on a shared,
noisy machine), with the runs of the compared paths interleaved so drift hits all alike.
"""
from __future__ import annotations

import argparse
import json
import platform
import time

import torch
import torch.nn.functional as F

import ncs_kernels as nk


def _time(fn, reps):
    fn()  # warm-up (allocator, MKL/oneDNN kernels)
    out = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


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
        times = {name: [] for name in fns}
        for name, fn in fns.items():
            fn()
        for _ in range(reps):
            for name, fn in fns.items():
                t0 = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t0)
        med = {name: min(v) * 1e3 for name, v in times.items()}
        row = {
            "op": "masked_linear fwd+bwd", "shape": f"{batch}x{k}->{n}", "density": density,
            "cpu_ms": med["cpu"], "dense_ms": med["dense"], "float_mask_ms": med["float_mask"],
            "cpu/dense": med["cpu"] / med["dense"], "cpu/float_mask": med["cpu"] / med["float_mask"],
        }
        rows.append(row)
        print(f"{row['shape']:>16}  cpu {med['cpu']:8.2f} ms  dense {med['dense']:8.2f} ms  "
              f"float-mask {med['float_mask']:8.2f} ms   cpu/dense {row['cpu/dense']:.3f}  "
              f"cpu/float-mask {row['cpu/float_mask']:.3f}")
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

    runs = {"fused_cpu": step(fused), "unfused": step(unfused)}
    times = {name: [] for name in runs}
    for fn in runs.values():
        fn()
    for _ in range(reps):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    # forward alone too
    fwd = {"fused_cpu": fused, "unfused": unfused}
    ftimes = {}
    with torch.no_grad():
        for name, fn in fwd.items():
            ftimes[name] = min(_time(fn, reps)) * 1e3
    saved = {name: _saved_bytes(fn)[1] for name, fn in fwd.items()}
    med = {name: min(v) * 1e3 for name, v in times.items()}
    row = {
        "op": "cross_masked_linear", "shape": f"B={batch} F={f} d={d} N={n}", "density": density,
        "fused_fwd_bwd_ms": med["fused_cpu"], "unfused_fwd_bwd_ms": med["unfused"],
        "fused_fwd_ms": ftimes["fused_cpu"], "unfused_fwd_ms": ftimes["unfused"],
        "speedup_fwd_bwd": med["unfused"] / med["fused_cpu"],
        "saved_bytes_fused": saved["fused_cpu"], "saved_bytes_unfused": saved["unfused"],
    }
    print(f"cross {row['shape']}: fwd+bwd fused {med['fused_cpu']:.1f} ms vs unfused {med['unfused']:.1f} ms "
          f"({row['speedup_fwd_bwd']:.2f}x); fwd {ftimes['fused_cpu']:.1f} vs {ftimes['unfused']:.1f} ms; "
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
