"""Every Triton kernel variant compiles for sm_90 (Triton's own compiler and bundled ptxas, no
GPU needed) within the shared-memory limit: the interpreter alone would not catch a kernel
that runs on CPU but cannot be lowered for the GPU."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_triton_kernels_compile_for_sm90(tmp_path):
    env = dict(os.environ, TRITON_CACHE_DIR=str(tmp_path))  # a cold cache: really compile
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "triton_compile_check.py"), "--arch", "90", "--quick"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    assert "ALL COMPILED" in proc.stdout
