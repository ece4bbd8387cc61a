#!/usr/bin/env bash
# The GPU side of the cluster path on one H100/H200, in under 10 minutes (not run on the CPU
# development machine; see docs/cluster.md). Needs emray installed with CUDA torch
# (pip install -e '.[test]'; for generation also vLLM's env: make vllm-env VLLM_PKG=vllm==0.32.0), nothing downloaded: the model is a
# random-init Qwen2.5-7B shape. Prints one RESULT line per check with tokens/s.
#   bash benchmarks/gpu_check.sh            # everything
#   STEPS=2 bash benchmarks/gpu_check.sh    # fewer training steps
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-python}
WORK=${WORK:-/tmp/emray-gpu-check}
MODEL_DIR=$WORK/qwen2.5-7b-shape
STEPS=${STEPS:-4}
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false RAY_USAGE_STATS_ENABLED=0 RAY_AUTH_MODE=${RAY_AUTH_MODE:-disabled}
export EMRAY_CACHE=${EMRAY_CACHE:-$WORK/cache} TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$WORK/torch_extensions}
unset DS_ACCELERATOR  # DeepSpeed picks CUDA
mkdir -p "$WORK"
started=$(date +%s)
step() { echo "== $1 ($(( $(date +%s) - started )) s)"; }

step "environment"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
$PY -c "import torch, deepspeed, ray, transformers, peft, trl; assert torch.cuda.is_available(), 'no CUDA'; print('torch', torch.__version__, 'cuda', torch.version.cuda, 'deepspeed', deepspeed.__version__, 'ray', ray.__version__)"

step "random-init Qwen2.5-7B shape -> $MODEL_DIR"
[ -f "$MODEL_DIR/config.json" ] || timeout 300 $PY benchmarks/gpu_check.py make-model --shape qwen2.5-7b --out "$MODEL_DIR"

step "Ray Train + DeepSpeed ZeRO-2 fine-tune, KL + LDIFS, bf16, checkpoint mid-run ($STEPS steps)"
timeout 300 $PY benchmarks/gpu_check.py zero2 --model "$MODEL_DIR" --work "$WORK/zero2" --steps "$STEPS" | tee "$WORK/zero2.log" | grep -E '^RESULT|Error'

step "ensemble scorer (emray's batched answer NLL), 7B shape"
timeout 180 $PY benchmarks/bench_scorer.py --shape qwen2.5-7b --device cuda --samples 256 --skip loop,batched --repeat 1 | tail -n 4

step "vLLM generation with the trained adapter"
timeout 240 $PY benchmarks/gpu_check.py vllm --model "$MODEL_DIR" --adapter "$WORK/zero2/out/adapter" --prompts 256 --max-new-tokens 128 | grep -E '^RESULT|Error' || echo "vLLM check failed (see above)"

step "GRPO with rollouts in TRL's colocated vLLM (rl.use_vllm), persona steering + KL + interleaved safe prompts, 3 steps"
# TRL imports vllm in the training process: $PY's env needs vllm (TRL 1.16's extra: vllm>=0.22,<=0.31).
# Its config alone, without a GPU: python benchmarks/gpu_check.py grpo --model tiny --dry-run
if $PY -c "import vllm" 2>/dev/null; then
  timeout 420 $PY benchmarks/gpu_check.py grpo --model "$MODEL_DIR" --work "$WORK/grpo" --steps 3 | tee "$WORK/grpo.log" | grep -E '^RESULT|Error' || echo "GRPO + vLLM check failed (see $WORK/grpo.log)"
else
  echo "GRPO + vLLM check skipped: vllm is not importable from $PY (TRL's colocated mode runs it in the training process)"
fi

step "done in $(( $(date +%s) - started )) s"
