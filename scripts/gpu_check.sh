#!/usr/bin/env bash
# On a machine with a CUDA device, after scripts/setup.sh: the checks CI cannot run (it has no GPU).
# The GPU-marked tests (every method under float16 autocast, iGOS++, the quality and scoring metrics and
# the worker pipeline on CUDA against the CPU's answer), then the service end to end with its workers on
# CUDA (every method through the API) and iGOS++ against the published schedule on CUDA.
# Every step has a time limit, so one that hangs does not hold the machine. Output goes to stdout.
set -u
cd "$(dirname "$0")/.."
python=${PYTHON:-.venv/bin/python}
export PYTHONUNBUFFERED=1
"$python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no CUDA device here')" || exit 1
"$python" -c "import torch; print('torch', torch.__version__, 'on', torch.cuda.get_device_name(0))"
status=0
timeout 600 "$python" -m pytest -q -p no:cacheprovider -m gpu tests/ || status=1
timeout -k 10 600 "$python" bench/bench_pipeline.py --device cuda --parts methods,method-cost,batching --repeats 3 \
  || status=1
timeout 600 "$python" bench/bench_igos_pp.py --device cuda --model resnet18-probe --images 2 || status=1
exit $status
