#!/usr/bin/env bash
# Train a vml-train task on one GPU and print samples/s and peak GPU memory.
#
#   scripts/train_gpu.sh                      # 3DGAN adapter (calo_gan) on all 5000 training electrons
#   scripts/train_gpu.sh regressor 5 512      # TASK EPOCHS GLOBAL_BATCH, then any extra vml-train options:
#   scripts/train_gpu.sh calo_gan 3 128 --bf16 --task-args '{"n_train": 5000, "n_valid": 1000}'
#
# Same engine and checkpoints as the CPU runs (vallecorsa_ml.distributed.ddp): a GPU checkpoint resumes on CPU
# processes and back. Several GPUs on one machine: vml-train --device cuda --nproc N (NCCL).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
py=${PYTHON:-$root/.venv/bin/python}
task=${1:-calo_gan}; epochs=${2:-3}; batch=${3:-128}
shift $(( $# < 3 ? $# : 3 ))
out=${OUT_DIR:-$root/runs/gpu-$task-$(date -u +%Y%m%d-%H%M%S)}
device=${DEVICE:-cuda}          # DEVICE=cpu runs the same script on the CPU (plumbing check)
mkdir -p "$(dirname "$out")"
[ "$device" = cpu ] || "$py" - <<'PY'
import sys, torch
if not torch.cuda.is_available(): sys.exit("train_gpu.sh: error: no CUDA GPU visible to torch")
p = torch.cuda.get_device_properties(0)
print(f"GPU: {p.name}, {p.total_memory/2**30:.1f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")
PY
extra=()
if [ "$task" = calo_gan ] || [ "$task" = regressor ] || [ "$task" = profile_gan ]; then
  if [[ " $* " != *" --task-args "* ]]; then
    extra=(--task-args '{"n_train": 5000, "n_valid": 1000}')
  fi
fi
vml_train=$(dirname "$py")/vml-train     # console script of the same environment (pip install -e .)
[ -x "$vml_train" ] || { echo "train_gpu.sh: error: $vml_train not found (run: pip install -e . in $root)" >&2; exit 1; }
"$vml_train" \
  --task "$task" --device "$device" --epochs "$epochs" --batch "$batch" --lr-rule sqrt --out "$out" "${extra[@]}" "$@" > "$out.log" 2>&1 \
  || { tail -20 "$out.log"; exit 1; }
"$py" - "$out/metrics.json" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))
print(f"task {m['task']}: {m['samples_per_s']:.1f} samples/s over {m['epochs'] - m['start_epoch']} epochs "
      f"(median step {m['step_s_median']*1e3:.1f} ms at batch {m['global_batch']}), "
      f"peak GPU memory {m.get('gpu_peak_mem_mb', float('nan')):.0f} MiB, energy {m['energy_kwh']*1e3:.3f} Wh ({m['energy_method']})")
print(f"run folder: {sys.argv[1].rsplit('/', 1)[0]}")
PY
