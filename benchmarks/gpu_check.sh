#!/usr/bin/env bash
# GPU check for a fresh NVIDIA machine, from a clean checkout, in under 8 minutes:
#   bash benchmarks/gpu_check.sh            (add --quick to check the script itself in a minute)
# Installs a venv with the CUDA builds (torch's default wheel, onnxruntime-gpu, nvImageCodec), prints the GPU,
# the providers actually used, images/s per precision, the batch size chosen, the decode bound and --decode gpu.
set -euo pipefail
cd "$(dirname "$0")/.."
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || echo "nvidia-smi not found"
python3 -m venv .venv-gpu
. .venv-gpu/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch  # the default wheel: CUDA build; its nvidia-* libraries serve ONNX Runtime too
python -m pip install -q -r requirements.txt onnx scikit-image
CUDA_MAJOR=$(python -c "import torch; print((torch.version.cuda or '12').split('.')[0])")
python -m pip install -q "nvidia-nvimgcodec-cu${CUDA_MAJOR}" || echo "nvImageCodec for CUDA ${CUDA_MAJOR} not installed"
python -m pip install -q tensorrt-cu${CUDA_MAJOR} 2>/dev/null || echo "TensorRT not installed (the TensorRT row is skipped)"
time python benchmarks/gpu_check.py "$@"
