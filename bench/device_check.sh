#!/usr/bin/env bash
# On a GPU machine, one command of at most 8 minutes: the CUDA tests (pytest -m cuda), then the
# throughput of the shared passes on ResNet-50 and DenseNet-121 at 224² in float32 and bfloat16,
# and each method's deviation under autocast. Prints everything; exits non-zero if a test failed.
#   bench/device_check.sh            (PYTHON=... to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
export PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
"$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
timeout 180 "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests/workers/test_cuda_paths.py
tests=$?
for model in resnet50 densenet121; do
  for precision in float32 bfloat16; do
    timeout 60 "$PYTHON" bench/shared_passes.py --device cuda --model "$model" --batch 8 \
      --repeats 5 --precision "$precision"
  done
done
timeout 90 "$PYTHON" bench/precision.py --device cuda --model resnet50 --size 224 --batch 8 \
  --methods saliency gradcam guided_backprop guided_gradcam smoothgrad integrated_gradients lrp deeplift
echo "cuda tests exit status: $tests"
exit $tests
