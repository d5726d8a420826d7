#!/usr/bin/env bash
# Fill tests/device/carry (git-ignored) for gpu_check.sh, on a machine that reaches PyPI:
#   tests/device/prepare_carry.sh QWEN_GGUF [TRACES.json]
# QWEN_GGUF: any Qwen2.5 GGUF, for its tokenizer keys. TRACES: from `python -m tests.bench.replay record`.
# The sdist is repacked without llama.cpp's test vocabularies, docs, web UI and the GPU backends other than
# CUDA, to stay within a 64 MiB carry.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
carry="$(realpath -m "${CARRY:-$here/carry}")"
gguf="$(realpath "$1")"
py="${PYTHON:-python3}"
mkdir -p "$carry/wheels"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
"$py" -m pip download -q --no-deps --no-binary :all: -d "$tmp" "llama-cpp-python==0.3.36"
tar -xzf "$tmp"/llama_cpp_python-0.3.36.tar.gz -C "$tmp"
src="$tmp/llama_cpp_python-0.3.36"
v="$src/vendor/llama.cpp"
rm -rf "$v"/models/* "$v"/docs "$v"/media "$v"/tools/ui "$v"/tools/mtmd "$v"/tests "$v"/benches "$src"/docs
# Backends this build never enables (CMake adds a backend's folder only when it is switched on).
for b in cann openvino webgpu et metal hexagon sycl vulkan opencl musa zdnn; do rm -rf "$v/ggml/src/ggml-$b"; done
tar -czf "$carry/llama_cpp_python-0.3.36.tar.gz" -C "$tmp" llama_cpp_python-0.3.36
"$py" -m pip download -q -d "$carry/wheels" numpy gguf typing_extensions diskcache jinja2 MarkupSafe \
    scikit-build-core pathspec packaging
(cd "$here/../.." && "$py" -m tests.device.gpu_check --out /dev/null --make-tokenizer "$gguf" "$carry/qwen-tokenizer.json.gz")
[[ -n "${2:-}" ]] && cp "$2" "$carry/qwen_traces.json"
du -sh "$carry"
