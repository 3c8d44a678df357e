"""Benchmarks for ncs_kernels and the ncs trainer.

pytest-benchmark suites:  pytest bench/ --benchmark-only
side-by-side script:      python bench/bench_ops.py --json bench/results/auto
trainer stages:           python bench/stages.py --json bench/results/auto
GPU check (one script):   bash bench/gpu_check.sh OUTDIR
See bench/results/README.md.
"""
