#!/usr/bin/env bash
# Build a virtual environment with the kohya_ss GUI's pins and run the tagger, BLIP/GIT, dual_caption and
# kohya-install tests in it: `bash tools/kohya_venv.sh [VENV_DIR]` (default .kohya_venv; reused when it exists).
#
# The pins are those of kohya_ss' requirements (Python 3.11, 2026-07). torch is the exception: kohya_ss pins
# torch 2.7.0 (its RunPod setup 2.5.0) with CUDA; TORCH (default 2.13.0, the CPU build this project's package
# source serves) replaces it, e.g. TORCH="2.7.0 --index-url https://download.pytorch.org/whl/cpu" where that
# index is reachable.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.kohya_venv}
TORCH=${TORCH:-2.13.0}
KOHYA_PINS=(transformers==4.54.1 tokenizers==0.21.4 onnxruntime-gpu==1.19.2 onnx==1.17.0 huggingface-hub==0.34.3
            numpy==1.26.4 pillow==11.2.1 toml==0.10.2)
TESTS=(tests/test_tagger_script.py tests/test_tagger_layouts.py tests/test_cuda_preload.py tests/test_captioners_blip.py
       tests/test_captioners_git.py tests/test_captioners_run.py tests/test_dual_caption_local.py
       tests/test_install_kohya.py tests/test_metadata_merge.py tests/test_packaging.py)

start=$(date +%s)
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
"$PY" -c 'import sys; sys.version_info[:2] == (3, 11) or print(f"note: Python {sys.version.split()[0]}; kohya_ss pins 3.11")'
constraints="$VENV/kohya_pins.txt"
printf '%s\n' "${KOHYA_PINS[@]}" > "$constraints"
# shellcheck disable=SC2086  # TORCH may carry pip options
"$PY" -m pip install -q torch==$TORCH
# the pins, then what captionkit and the chosen tests need, held to the pins (-c) so nothing upgrades them
"$PY" -m pip install -q "${KOHYA_PINS[@]}"
"$PY" -m pip install -q -c "$constraints" -r requirements.txt "safetensors>=0.4" "pytest>=8" "pytest-timeout>=2.2" \
    "scikit-image>=0.22" setuptools wheel
built=$(date +%s)
"$PY" -m pip check
"$PY" - <<'EOF'
import importlib.metadata as md
for name in ("torch", "transformers", "tokenizers", "onnxruntime-gpu", "onnx", "huggingface-hub", "numpy", "pillow"):
    print(f"{name}=={md.version(name)}", end="  ")
print()
EOF
HF_HUB_OFFLINE=1 "$PY" -m pytest -q -p no:cacheprovider "${TESTS[@]}"
echo "kohya venv: build/update $((built - start)) s, tests $(($(date +%s) - built)) s"
