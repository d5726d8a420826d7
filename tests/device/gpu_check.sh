#!/usr/bin/env bash
# The GPU check in one command: build llama-cpp-python for this machine's GPU from the carried sdist
# (no network), write random-weight Qwen2.5-7B/0.5B-shaped GGUFs, measure, write one JSON.
#
#   tests/device/gpu_check.sh [OUT.json]          # on a CUDA machine: nvcc and CMake on PATH
#   tests/device/gpu_check.sh --cpu [OUT.json]    # the CPU path: the current Python, small shapes
#
# The carry folder (tests/device/carry, git-ignored; made by tests/device/prepare_carry.sh on a machine
# with PyPI) holds: a trimmed llama-cpp-python sdist, wheels for its build and run dependencies and
# for gguf, the Qwen2.5 tokenizer keys, and optionally qwen_traces.json (python -m tests.bench.replay record).
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
carry="$(realpath -m "${CARRY:-$here/carry}")"
mode=gpu
if [[ "${1:-}" == "--cpu" ]]; then mode=cpu; shift; fi
out="$(realpath -m "${1:-${OUT:-/tmp}/gpu_check.json}")"
cd "$root"  # gpu_check runs as the module tests.device.gpu_check, found from here
traces=()
[[ -f "$carry/qwen_traces.json" ]] && traces=(--traces "$carry/qwen_traces.json")
[[ -f "$carry/qwen-tokenizer.json.gz" ]] || { echo "gpu_check: $carry/qwen-tokenizer.json.gz missing (run prepare_carry.sh)" >&2; exit 2; }

if [[ "$mode" == cpu ]]; then
    py="${PYTHON:-python3}"
    exec "$py" -m tests.device.gpu_check --shapes small --out "$out" --tokenizer "$carry/qwen-tokenizer.json.gz" \
        --workdir /tmp/specgen-gpu-check-cpu --tokens 48 --rounds 2 "${traces[@]}"
fi

command -v nvcc >/dev/null || { echo "gpu_check: nvcc not found; use --cpu for the CPU path" >&2; exit 2; }
venv=/tmp/specgen-gpu-venv
t0=$(date +%s)
if [[ ! -x "$venv/bin/python" ]] || ! "$venv/bin/python" -c "import llama_cpp" 2>/dev/null; then
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --no-index --find-links "$carry/wheels" numpy gguf typing_extensions diskcache \
        jinja2 scikit-build-core pathspec packaging
    # Only this machine's GPU architecture, no tests/examples/server: minutes, not tens of minutes.
    CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=native -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF \
-DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TOOLS=OFF -DGGML_NATIVE=ON" \
    CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$venv/bin/pip" install -q --no-index --no-build-isolation --find-links "$carry/wheels" \
        "$carry"/llama_cpp_python-*.tar.gz
fi
echo "gpu_check: llama-cpp-python ready after $(( $(date +%s) - t0 )) s" >&2
PYTHONPATH="$root/src" "$venv/bin/python" -m tests.device.gpu_check --shapes qwen7b --out "$out" \
    --tokenizer "$carry/qwen-tokenizer.json.gz" "${traces[@]}"
echo "gpu_check: wrote $out after $(( $(date +%s) - t0 )) s" >&2
