# The one build definition of the package. setuptools + torch.utils.cpp_extension drive it:
#   pip install --no-build-isolation -e .        (editable; or without -e for a plain install)
# It builds the extension ncs_kernels._C from csrc/ops.cpp + csrc/cpu/*.cpp (always) and, when
# this torch has CUDA and nvcc is found, also csrc/cuda_backend.cpp + csrc/cuda/*.cu with
# -DNCS_WITH_CUDA. CMakeLists.txt is NOT used by pip: it is a secondary, native-only build of the
# same sources (to compile and inspect the C++/CUDA without pip); keep the two source lists alike.
#
# torch is deliberately not in install_requires (nor in pyproject's build requirements): pip must
# never pull a torch build of its own choosing over the one the user installed for their
# hardware. Install torch first, then build with --no-build-isolation so that this file sees it.
#
# Environment switches:
#   NCS_BUILD_CUDA=auto|0|1   auto (default): build the CUDA kernels when torch.version.cuda is set
#                             and nvcc is found (CUDA_HOME); 0: never; 1: required (fails clearly).
#   NCS_BUILD_NATIVE=0        skip the native extension entirely (pure-Python install; the package
#                             then runs on its torch/triton backends).
#   TORCH_CUDA_ARCH_LIST      GPU architectures for nvcc (default here: "8.0;9.0a").
#   MAX_JOBS                  parallel compile jobs (ninja is used when installed).
import glob
import os
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _rel(paths):
    return sorted(os.path.relpath(p, ROOT) for p in paths)


def _env_switch(name, default="auto"):
    val = os.environ.get(name, default).strip().lower()
    if val in ("1", "true", "yes", "on"):
        return "1"
    if val in ("0", "false", "no", "off"):
        return "0"
    if val in ("", "auto"):
        return "auto"
    sys.exit(f"setup.py: {name} must be auto, 0 or 1, got {os.environ.get(name)!r}")


def _native_extensions():
    """([extension], cmdclass) for ncs_kernels._C, or ([], {}) when the native build is skipped."""
    if _env_switch("NCS_BUILD_NATIVE", "1") == "0":
        print("setup.py: NCS_BUILD_NATIVE=0, skipping the native extension ncs_kernels._C")
        return [], {}
    try:
        import torch
        from torch.utils import cpp_extension
    except ImportError as e:
        sys.exit(
            "setup.py: torch is needed to build ncs_kernels._C but is not importable "
            f"({e}). Install torch for your platform first, then build with "
            "`pip install --no-build-isolation .` (an isolated build environment has no torch). "
            "To install without native kernels, set NCS_BUILD_NATIVE=0."
        )

    cpu_sources = _rel([os.path.join(ROOT, "csrc", "ops.cpp")] + glob.glob(os.path.join(ROOT, "csrc", "cpu", "*.cpp")))
    cuda_sources = _rel(
        [os.path.join(ROOT, "csrc", "cuda_backend.cpp")] + glob.glob(os.path.join(ROOT, "csrc", "cuda", "*.cu"))
    )

    want_cuda = _env_switch("NCS_BUILD_CUDA")
    cuda_home = cpp_extension.CUDA_HOME
    have_nvcc = bool(cuda_home) and os.path.exists(os.path.join(cuda_home, "bin", "nvcc"))
    have_cuda_sources = all(os.path.exists(os.path.join(ROOT, s)) for s in cuda_sources) and any(
        s.endswith(".cu") for s in cuda_sources
    )
    why_not = None
    if torch.version.cuda is None:
        why_not = f"this torch ({torch.__version__}) is built without CUDA"
    elif not have_nvcc:
        why_not = "nvcc was not found (set CUDA_HOME to the CUDA toolkit that matches torch.version.cuda)"
    elif not have_cuda_sources:
        why_not = "csrc/cuda_backend.cpp or csrc/cuda/*.cu is missing"
    if want_cuda == "1" and why_not:
        sys.exit(f"setup.py: NCS_BUILD_CUDA=1 but the CUDA kernels cannot be built: {why_not}")
    with_cuda = want_cuda != "0" and why_not is None
    if want_cuda == "auto" and why_not:
        print(f"setup.py: building CPU kernels only: {why_not}")

    # -O3 and the compiler's own auto-vectorisation for the baseline ISA only: no -march=native,
    # a built wheel has to run on other machines. OpenMP is what at::parallel_for uses when torch
    # itself was built with it (the Linux wheels are; they ship libgomp.so.1, which the dynamic
    # loader then shares with this extension instead of starting a second thread pool).
    # No -std here: cpp_extension adds the standard this torch's headers need (C++17 or C++20).
    cxx = ["-O3", "-fno-math-errno"]
    ldflags = []
    if sys.platform.startswith("linux") and "OpenMP" in torch.__config__.parallel_info():
        cxx.append("-fopenmp")
        ldflags.append("-fopenmp")
    macros = []
    sources = list(cpu_sources)
    extra = {"cxx": cxx}
    if with_cuda:
        os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")
        macros.append(("NCS_WITH_CUDA", None))  # for cxx and nvcc alike
        sources += cuda_sources
        extra["nvcc"] = ["-O3", "-lineinfo", "-DNCS_WITH_CUDA"]
        cxx.append("-DNCS_WITH_CUDA")
        ext_cls = cpp_extension.CUDAExtension
        print(f"setup.py: building CPU + CUDA kernels for TORCH_CUDA_ARCH_LIST={os.environ['TORCH_CUDA_ARCH_LIST']}")
    else:
        ext_cls = cpp_extension.CppExtension
    ext = ext_cls(
        name="ncs_kernels._C",
        sources=sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        define_macros=macros,
        extra_compile_args=extra,
        extra_link_args=ldflags,
    )
    use_ninja = cpp_extension.is_ninja_available()
    build_ext = cpp_extension.BuildExtension.with_options(use_ninja=use_ninja)
    return [ext], {"build_ext": build_ext}


ext_modules, cmdclass = _native_extensions()

ncs_packages = ["ncs"] + ["ncs." + p for p in find_packages(os.path.join(ROOT, "python", "ncs"))]

setup(
    name="ncs",
    version="0.1.0",
    description="NCS4CVR: neuron-connection level sharing multi-task CVR models with bit-packed task masks "
    "and fused masked / feature-cross kernels (C++, CUDA, Triton)",
    python_requires=">=3.10",
    packages=find_packages(ROOT, include=["ncs_kernels", "ncs_kernels.*"]) + ncs_packages,
    package_dir={"ncs": "python/ncs"},
    include_package_data=False,
    install_requires=["numpy", "safetensors", "pyyaml", "tqdm", "matplotlib", "pyarrow"],
    extras_require={
        "test": ["pytest", "pytest-benchmark", "pytest-xdist", "hypothesis", "google-crc32c", "optuna==5.0.0",
                 "onnx==1.23.2", "onnxruntime==1.32.0", "isal==1.9.1"],
        "tune": ["optuna==5.0.0"],
        # ncs export --formats onnx (and its onnxruntime self-check); the legacy TorchScript-based
        # exporter (dynamo=False) that ncs uses needs no onnxscript
        "export": ["onnx==1.23.2", "onnxruntime==1.32.0"],
        "fast-crc": ["google-crc32c"],
        # ncs data convert: ISA-L gzip inflate for TFRecord .gz input (about 2x zlib)
        "fast-data": ["isal==1.9.1"],
        "triton": ["triton"],
    },
    entry_points={"console_scripts": ["ncs = ncs.cli:main"]},
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
