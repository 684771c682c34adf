#!/usr/bin/env bash
# GPU benchmark of issue 13: the training step at base size, fp32 vs bf16 (and fairseq's own fp32
# wav2vec 2.0), samples/s and model FLOP utilisation against an H200's dense bf16 peak of
# 989 TFLOP/s. The python part is benchmarks/bench_precision.py (its docstring says which FLOPs
# are counted: torch's FlopCounterMode over forward + backward, matmuls, convolutions, attention).
#
# A GPU machine may have another Python and torch and no package index, so this works in two steps:
#   benchmarks/gpu_bench.sh prepare [DIR] [PYVER ...]  here, with an index: DIR (default gpu_bundle/)
#        gets fairseq-fixed's source (it builds on the GPU machine against the torch found there)
#        and wheels of what the plugin imports, for each PYVER (default: this Python's, e.g. 3.11).
#        numpy, scipy, scikit-learn and pandas are left out (too big to carry for several Pythons;
#        GPU images ship them); BUNDLE_HEAVY=1 adds them.
#   benchmarks/gpu_bench.sh run [DIR]                   on the GPU machine, from the repository root:
#        a venv in .venv-gpu that sees the machine's torch (--system-site-packages), an install from
#        DIR without an index, then the benchmark (about 1-2 minutes after a 1-3 minute fairseq build).
#   benchmarks/gpu_bench.sh tiny                        any machine with the project's .venv: the same
#        python part with a one-layer model (checks that it runs; CPU is fine).
# BENCH_ARGS adds arguments to bench_precision.py (e.g. "--batch 128 --rounds 5").
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:-}
dir=${2:-gpu_bundle}
PYTHON=${PYTHON:-python3}
# What importing fairseq and the plugin needs besides torch (pip skips what is installed already).
# antlr4-python3-runtime 4.9.3 (hydra's pin) exists only as a source archive: it is bundled and
# installed apart, after setuptools.
LIGHT="setuptools wheel Cython hydra-core==1.3.2 omegaconf==2.3.0 bitarray sacrebleu portalocker regex tabulate colorama
lxml cffi pycparser tqdm PyYAML packaging typing_extensions attrs joblib threadpoolctl python-dateutil six
charset-normalizer narwhals cloudpickle"
HEAVY="numpy scipy scikit-learn pandas"

case "$mode" in
prepare)
    shift || true; shift || true
    versions=${*:-$($PYTHON -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')}
    mkdir -p "$dir"
    $PYTHON -m pip download --quiet --no-deps --no-binary fairseq-fixed fairseq-fixed==0.12.3.1 -d "$dir"
    for v in $versions; do
        # shellcheck disable=SC2086
        $PYTHON -m pip download --quiet --only-binary=:all: --python-version "$v" --platform manylinux2014_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 --implementation cp \
            --no-deps -d "$dir" $LIGHT ${BUNDLE_HEAVY:+$HEAVY}
    done
    $PYTHON -m pip download --quiet --no-deps --no-binary antlr4-python3-runtime antlr4-python3-runtime==4.9.3 -d "$dir"
    echo "gpu_bench.sh: $(ls "$dir" | wc -l) files, $(du -sh "$dir" | cut -f1) in $dir (Python $versions); carry it with the working tree"
    ;;
run)
    [ -d "$dir" ] || { echo "gpu_bench.sh: $dir not found; run 'benchmarks/gpu_bench.sh prepare $dir' where an index is reachable" >&2; exit 2; }
    $PYTHON -c 'import torch, sys; assert torch.cuda.is_available(), "no CUDA device"; print("python", sys.version.split()[0], "torch", torch.__version__, torch.cuda.get_device_name())'
    [ -x .venv-gpu/bin/python ] || $PYTHON -m venv --system-site-packages .venv-gpu
    pip=(.venv-gpu/bin/python -m pip install --quiet --no-index --find-links "$dir")
    "${pip[@]}" setuptools wheel
    "${pip[@]}" --no-build-isolation antlr4-python3-runtime==4.9.3
    # shellcheck disable=SC2086
    "${pip[@]}" $LIGHT
    for package in $HEAVY; do
        .venv-gpu/bin/python -c "import importlib.util as u, sys; sys.exit(u.find_spec('${package/scikit-learn/sklearn}') is None)" \
            || "${pip[@]}" "$package"
    done
    # fairseq builds against the torch and numpy found here (no build isolation, no torch download).
    .venv-gpu/bin/python -c 'import fairseq' 2>/dev/null || "${pip[@]}" --no-build-isolation --no-deps "$dir"/fairseq[-_]fixed-*.tar.gz
    "${pip[@]}" --no-build-isolation --no-deps -e .
    .venv-gpu/bin/python -c 'import fairseq_ecg' 2>&1 | grep -v tensorboardX || true
    # shellcheck disable=SC2086
    .venv-gpu/bin/python benchmarks/bench_precision.py --device cuda --sizes base --peak-tflops 989 --no-loader ${BENCH_ARGS:-}
    ;;
tiny)
    # shellcheck disable=SC2086
    .venv/bin/python benchmarks/bench_precision.py --tiny --threads 1 --peak-tflops 989 ${BENCH_ARGS:-}
    ;;
*)
    sed -n '2,22p' "$0"
    exit 2
    ;;
esac
