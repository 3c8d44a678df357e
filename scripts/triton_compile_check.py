"""Compile every Triton kernel of ncs_kernels for real GPUs, on a machine without one.

The Triton interpreter (what the CPU tests use) checks the arithmetic but not the lowering:
a kernel can run there and still fail to compile for a GPU, or need more shared memory than an
SM has. This script runs Triton's own compiler (with its bundled ptxas) for sm_90 and sm_80 on
every kernel variant and tile the launchers can pick, and checks shared memory against each
architecture's limit. Usage: python scripts/triton_compile_check.py [--arch 90,80] [--quick]
Exit status 0 when everything compiled; prints one line per kernel variant.
"""
import argparse
import os
import re
import sys
import time

if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
    # @triton.jit returns interpreter objects when this is set: re-run without it
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET")
    os.execve(sys.executable, [sys.executable] + sys.argv, env)

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from ncs_kernels.backends.triton import embedding_adam as EA  # noqa: E402
from ncs_kernels.backends.triton import masked_adam as MA  # noqa: E402
from ncs_kernels.backends.triton import masked_linear as ML  # noqa: E402

# bytes of shared memory one block may use (opt-in maximum): H100/H200 and A100
SHARED_LIMIT = {90: 227 * 1024, 80: 163 * 1024}
# scalar (non-pointer) integer arguments are not 16-divisible in general
NOT_DIVISIBLE = {"D", "M", "P", "R", "K", "WORDS", "FF", "B", "N", "NUMEL", "SPLITS", "ROWS_PER_SPLIT", "K_TILES"}


def compile_kernel(fn, signature, constants, arch, num_warps, num_stages):
    full = {name: ("constexpr" if name in constants else signature[name]) for name in fn.arg_names}
    attrs = {
        (i,): [["tt.divisibility", 16]]
        for i, name in enumerate(fn.arg_names)
        if name in signature and signature[name].startswith("*")
    }
    src = ASTSource(fn, full, constants, attrs)
    return triton.compile(src, target=GPUTarget("cuda", arch, 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def variants(quick):
    dtypes = ("fp32", "bf16") if quick else ("fp32", "fp16", "bf16")
    for dt in dtypes:
        ptr = "*" + dt
        br = 32 if dt == "fp32" else 64
        prec = "ieee" if dt == "fp32" else "tf32"  # the 16-bit dot ignores it; fp32 exact by default
        mm_sig = dict(a_ptr=ptr, a2_ptr=ptr, w_ptr=ptr, p_ptr="*i32", bias_ptr=ptr, c_ptr=ptr, c2_ptr=ptr,
                      M="i32", P="i32", R="i32", K="i32", WORDS="i32", FF="i32")
        tiles = ((128, 128, 8), (64, 64, 4)) if quick else ((128, 128, 8), (128, 64, 4), (64, 64, 4))
        # (W_T, A_CROSS, C_CROSS): forward, dx, cross forward, cross dx
        for wt, ac, cc in ((True, False, False), (False, False, False), (True, True, False), (False, False, True)):
            for mask_w in ((True,) if quick else (True, False)):
                for bm, bp, warps in tiles:
                    yield (f"masked_mm {dt} W_T={wt} A_CROSS={ac} C_CROSS={cc} MASK_W={mask_w} {bm}x{bp}x{br}",
                           ML._masked_mm_kernel, mm_sig,
                           dict(W_T=wt, A_CROSS=ac, C_CROSS=cc, HAS_BIAS=wt, MASK_W=mask_w, BLOCK_M=bm,
                                BLOCK_P=bp, BLOCK_R=br, GROUP_M=8, DOT_PREC=prec), warps, 3)
        dw_sig = dict(dy_ptr=ptr, x_ptr=ptr, x2_ptr=ptr, p_ptr="*i32", out_ptr="*fp32", B="i32", N="i32",
                      K="i32", WORDS="i32", FF="i32", ROWS_PER_SPLIT="i32")
        for xc in (False, True):
            for bn, bk, warps in ((128, 128, 8), (64, 64, 4)):
                yield (f"dw {dt} X_CROSS={xc} {bn}x{bk}x{br}", ML._dw_kernel, dw_sig,
                       dict(X_CROSS=xc, BLOCK_N=bn, BLOCK_K=bk, BLOCK_B=br, GROUP_N=8, DOT_PREC=prec), warps, 3)
        yield (f"sum_splits {dt}", ML._sum_splits_kernel,
               dict(part_ptr="*fp32", out_ptr=ptr, NUMEL="i32", SPLITS="i32"), dict(BLOCK=1024), 4, 3)
        yield (f"apply_mask {dt}", ML._apply_mask_kernel,
               dict(w_ptr=ptr, p_ptr="*i32", out_ptr=ptr, N="i32", K="i32", WORDS="i32"),
               dict(BLOCK_N=16, BLOCK_K=256), 4, 3)
        adam_scalars = {k: "fp32" for k in ("lr beta1 one_minus_beta1 beta2 one_minus_beta2 "
                                            "bc1 bc2 eps weight_decay decay_factor").split()}
        adam_sig = dict(p_ptr=ptr, g_ptr=ptr, m_ptr=ptr, v_ptr=ptr, packed_ptr="*i32", N="i32", K="i32",
                        WORDS="i32", K_TILES="i32", **adam_scalars)
        # tiles launch_config picks: K >= 256, a one-row weight, a narrow one
        for (has_mask, l2, dec), (bn, bk) in zip(((True, True, False), (True, False, True), (True, False, False)),
                                                 ((16, 256), (1, 256), (128, 32))):
            yield (f"masked_adam {dt} HAS_MASK={has_mask} L2={l2} DECOUPLED={dec} {bn}x{bk}", MA._masked_adam_kernel,
                   adam_sig, dict(HAS_MASK=has_mask, L2_DECAY=l2, DECOUPLED=dec, BLOCK_N=bn, BLOCK_K=bk), 4, 3)
        flat_sig = dict(p_ptr=ptr, g_ptr=ptr, m_ptr=ptr, v_ptr=ptr, NUMEL="i32", **adam_scalars)
        for l2, dec in (((False, True),) if quick else ((False, False), (True, False), (False, True))):
            yield (f"adam_flat {dt} L2={l2} DECOUPLED={dec}", MA._adam_flat_kernel, flat_sig,
                   dict(L2_DECAY=l2, DECOUPLED=dec, BLOCK=4096), 4, 3)

        # fused embedding backward + row-wise Adam (the table in fp32 or 16-bit, fp32 registers)
        emb_sig = dict(w_ptr=ptr, m_ptr=ptr, v_ptr=ptr, g_ptr=ptr, uniq_ptr="*i64", offs_ptr="*i64",
                       bag_ptr="*i64", div_ptr="*fp32", D="i32", omb1="fp32", omb2="fp32", eps="fp32",
                       neg_step="fp32")
        for mean in (True, False):
            for block, warps in ((64, 1), (256, 4)):
                yield (f"rowwise_adam {dt} MEAN={mean} BLOCK_D={block}", EA._rowwise_adam_kernel, emb_sig,
                       dict(MEAN=mean, BLOCK_D=block), warps, 3)


def int32_offset_problem(ttir: str) -> str:
    """'' when the split-sum kernel forms its offsets in 64 bits, else what is wrong: the split
    offset s * NUMEL of a [SPLITS, NUMEL] buffer overflows int32 once SPLITS * N * K > 2**31 - 1,
    so the kernel must hold no 32-bit scalar multiply (it casts s to int64 first)."""
    bad = re.findall(r"arith\.muli [^\n]*: i32\b", ttir)
    if bad:
        return f" - a 32-bit offset product in the kernel (int overflow past 2**31 elements): {bad[0].strip()}"
    if not re.search(r"arith\.muli [^\n]*: i64\b", ttir):
        return " - no 64-bit offset product found in the kernel"
    return ""


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="90,80", help="comma-separated SM versions (default 90,80)")
    ap.add_argument("--quick", action="store_true", help="fewer dtypes and tiles (for the test suite)")
    args = ap.parse_args(argv)
    archs = [int(a) for a in args.arch.split(",") if a]
    failures = 0
    t0 = time.time()
    for arch in archs:
        for name, fn, sig, consts, warps, stages in variants(args.quick):
            try:
                k = compile_kernel(fn, sig, consts, arch, warps, stages)
                shared = int(k.metadata.shared)
                ok = shared <= SHARED_LIMIT.get(arch, 48 * 1024)
                why = "" if ok else f" > limit {SHARED_LIMIT.get(arch)}"
                if ok and name.startswith("sum_splits"):
                    why = int32_offset_problem(k.asm["ttir"])
                    ok = not why
                failures += not ok
                print(f"sm_{arch} {'ok  ' if ok else 'FAIL'} {name}: shared {shared} B" + why)
            except Exception as e:  # a lowering error names the variant
                failures += 1
                print(f"sm_{arch} FAIL {name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
    print(f"{'ALL COMPILED' if not failures else f'{failures} FAILED'} in {time.time() - t0:.1f}s "
          f"(triton {triton.__version__})")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
