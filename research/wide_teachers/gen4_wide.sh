#!/bin/bash
# One GPU lease (about 9 minutes of command time) for the fourth student generation:
#   1. three wide teachers from scratch, side by side (utkface_wide_teacher.toml, seeds 0-2),
#      their epochs fitted to the time left after a 2-epoch probe;
#   2. students warm-started from 3.1.0 and taught online by them (utkface_gen4_wide.toml), and
#      by the wide three plus the 3.1.0 run's three networks (run utkface-gen4-mixed), with the
#      labels-only control, their epochs fitted by training.parallel --budget-s.
# It expects, in the working tree: .whl (pydantic wheels missing on the device), the crop cache
# packed by `python -m training.cache_pack pack` in .devdata/utkface-64.pack, and
# .devdata/gen4.tar.xz holding runs/utkface-gpu/ordinal_teacher/best.pt and the 3.1.0 run's
# three best.pt files. Logs and checkpoints come back in $OUT.
# Env: P1_END / END (seconds since start at which each phase must end), EXTRA (overrides added
# to every training command, e.g. "data.limit_per_split=64" for a dry run on the CPU).
set -u
cd "$(dirname "$0")/../.."
PY=${PY:-python3}
OUT=${OUT:-/tmp/gen4-out}
mkdir -p "$OUT"
T0=$(date +%s)
el() { echo $(( $(date +%s) - T0 )); }
extra=()
for kv in ${EXTRA:-}; do extra+=(--set "$kv"); done
if [ -z "${SKIP_SETUP:-}" ]; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site
  nvidia-smi --query-gpu=name,memory.used,memory.total --format=csv
  xz -dk .devdata/utkface-64.pack/index.csv.xz || exit 1
  $PY -m training.cache_pack unpack .devdata/utkface-64.pack data/cache/utkface-64 || exit 1
  tar xJf .devdata/gen4.tar.xz || exit 1
fi
export PYTHONUNBUFFERED=1
echo "setup done at $(el) s"
WIDE=research/wide_teachers/configs/utkface_wide_teacher.toml
THREADS=${THREADS:-4}
wide() {  # seed, run dir, epochs, log, time limit (s)
  timeout "$5" $PY -m agelens.cli train --config $WIDE --stages dk_teacher --set run_dir="$2" --set dk_teacher.seed="$1" \
    --set dk_teacher.epochs="$3" --set threads=$THREADS "${extra[@]}" > "$4" 2>&1
}
for s in 0 1 2; do wide $s runs/probe-wide-s$s 2 "$OUT/probe-wide-s$s.log" 150 & done
wait
SPE=$($PY -c "import json; print(max(json.loads(open(f'runs/probe-wide-s{s}/dk_teacher/history.jsonl').read().splitlines()[-1])['seconds'] for s in range(3)))") || exit 1
P1_END=${P1_END:-270}
EP=$($PY -c "import math; print(max(2, min(100, math.floor(0.9 * ($P1_END - $(el) - 20) / $SPE))))")
echo "wide teachers: $SPE s per epoch in the probe -> $EP epochs (at $(el) s)"
LIMIT=$(( P1_END + 30 - $(el) ))
for s in 0 1 2; do wide $s runs/utkface-wide-gpu-s$s "$EP" "$OUT/wide-s$s.log" $LIMIT & done
wait
echo "phase 1 done at $(el) s"
grep -h "teacher: test MAE" "$OUT"/wide-s*.log
ls runs/utkface-wide-gpu-s*/dk_teacher/best.pt || exit 1
END=${END:-520}
B=$(( END - $(el) ))
GEN4=research/wide_teachers/configs/utkface_gen4_wide.toml
MIXED='born_again.teachers=["../utkface-wide-gpu-s0/dk_teacher","../utkface-wide-gpu-s1/dk_teacher","../utkface-wide-gpu-s2/dk_teacher","../utkface-gpu-patient/student_patient_seed1","../utkface-gpu-patient/ablation/student_ce_seed0","../utkface-gpu-patient/ablation/student_ce_seed1"]'
timeout $(( B + 40 )) $PY -m training.parallel --config $GEN4 --budget-s $B "${extra[@]}" > "$OUT/gen4-wide.log" 2>&1 &
timeout $(( B + 40 )) $PY -m training.parallel --config $GEN4 --budget-s $B "${extra[@]}" --set run_dir=runs/utkface-gen4-mixed \
  --set ablation.enabled=false --set "$MIXED" > "$OUT/gen4-mixed.log" 2>&1 &
wait
echo "phase 2 done at $(el) s"
tail -n 3 "$OUT"/gen4-*.log
tar czf "$OUT/meta.tgz" --exclude='*.pt' --exclude='*.tmp' runs/utkface-wide-gpu-s* runs/utkface-gen4-* runs/probe-wide-s0
find runs/utkface-wide-gpu-s* runs/utkface-gen4-* -path '*/probe' -prune -o -name best.pt -print \
  | tar czf - -T - | split -b 15m - "$OUT/pt.tgz.part-"
ls -la "$OUT"
echo "all done at $(el) s"
