#!/bin/bash
# The open-intent benchmark (bench/open_intent.py, full profile, seeds 0-2) on a machine with an NVIDIA GPU and
# 16 CPU cores: fine-tuning on the GPU (SUPPORTFLOW_TRAIN_DEVICE=cuda), the rest on the CPUs, the three seeds as
# three processes side by side, each model kept in --runs-dir, then one call that reuses them all and writes the
# result. How bench/results/open_intent_banking77.json was measured (docs/classifier.md).
#
# That machine had PyTorch, onnxruntime and tokenizers but no network, and received at most 64 MiB, so it was sent,
# in .devcarry/ (ignored by git):
#   whl/         the project's other pure-Python needs as wheels for its Python 3.12 (pip download --no-deps
#                --python-version 3.12 ...): datasets, evaluate, pydantic, pydantic-core, pydantic-settings,
#                python-dotenv, annotated-types, typing-inspection, typing-extensions, dill, multiprocess
#   transformers-5.23.0.tar.xz  the project's transformers, unpacked (its wheel, xz-compressed: 4 MB against 13)
#   base16/      the converted base model (models/base/*/) with its weights stored as fp16 (45 MB against 90)
# Run from the repository root: OUT=<folder for the results> bash bench/open_intent_gpu.sh
set -u
T0=$(date +%s)
nvidia-smi -L; python3 -V; nproc
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .devcarry/whl/*.whl || exit 3
tar -xJf .devcarry/transformers-5.23.0.tar.xz -C /tmp/site || exit 3
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_EVALUATE_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p /tmp/base && cp .devcarry/base16/*.json /tmp/base/
python3 - <<'PY' || exit 4
from safetensors.torch import load_file, save_file
save_file({k: v.float().contiguous() for k, v in load_file(".devcarry/base16/model.safetensors").items()}, "/tmp/base/model.safetensors")
import torch, transformers, datasets, evaluate, onnxruntime, pydantic_settings
print("torch", torch.__version__, torch.cuda.is_available(), "transformers", transformers.__version__, "ort", onnxruntime.__version__)
import bench.open_intent
from supportflow.settings import get_settings
print(get_settings().train_device, get_settings().base_model)
PY
export SUPPORTFLOW_BASE_MODEL=/tmp/base SUPPORTFLOW_TRAIN_DEVICE=cuda SUPPORTFLOW_TRAIN_THREADS=5
COND="fine-tuned on one NVIDIA H200 (fp32), three seeds as three processes side by side on 16 CPU cores; base weights carried as fp16 and widened back to fp32"
for s in 0 1 2; do
  timeout ${BUDGET:-470} python3 bench/open_intent.py --profile full --seeds $s --quantile 0.95 --runs-dir /tmp/runs --out /tmp/seed$s.json --conditions "$COND" > $OUT/log-seed$s.txt 2>&1 &
done
wait
echo "seeds done after $(( $(date +%s) - T0 )) s"; ls /tmp/runs
tar -czf $OUT/runs.tgz -C /tmp runs
SUPPORTFLOW_TRAIN_THREADS=16 timeout 60 python3 bench/open_intent.py --profile full --seeds 0 1 2 --quantile 0.95 --runs-dir /tmp/runs --out $OUT/open_intent_banking77.json --conditions "$COND" > $OUT/log-merge.txt 2>&1
tail -c 3000 $OUT/log-merge.txt
echo "all done after $(( $(date +%s) - T0 )) s"
