#!/usr/bin/env bash
# Session 34's GPU leg (docs/QAGEN_EXPERIMENTS.md, "Session 34"): three continuations of B0 trained
# side by side on one GPU, each averaged over its second half, screened on X2, and the screen's
# pick sent back for the CPU decision on X3. Run from the repo root with OUT set; everything the
# machine lacks travels in .carry/ (made by benchmarks/gpu_s34_carry.sh).
# A time budget, not a step count, bounds the leg: the device lends 15 minutes in all, so every
# stage after training is cut off in time for the pick and the packing to happen.
set -uo pipefail
T0=$SECONDS
BUDGET=${BUDGET:-570}        # seconds the whole script may take
TRAIN_MIN=${TRAIN_MIN:-3.6}  # --max-minutes of each training run
STEPS=${STEPS:-500}
BATCH=${BATCH:-256}
PAIRS=${PAIRS:-160}
DEVICE=${DEVICE:-cuda}
DTYPE=${DTYPE:-bf16}
THREADS=${THREADS:-4}
VAL=${VAL:-400}
SAVE=${SAVE:-25}
W=${WORK:-/tmp/s34}
C=.carry
B0=quals_fast/models/qagen-minilm
: "${OUT:?set OUT}"
L=$W/logs
mkdir -p "$W" "$L" "$OUT"
log() { echo "[$((SECONDS - T0)) s] $*" | tee -a "$OUT/main.log"; }
QF=(python3 -c 'import sys; from quals_fast.cli import main; sys.argv[0] = "quals-fast"; sys.exit(main())')
# seconds left before the budget minus a reserve, at least 10
until_reserve() { local s=$((BUDGET - (SECONDS - T0) - $1)); echo $((s > 10 ? s : 10)); }
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=$THREADS

# Setup fails fast, so that a broken start still leaves device time for a second try.
if [ -f $C/site.tar.xz ]; then
  mkdir -p /tmp/site && tar xJf $C/site.tar.xz -C /tmp/site || exit 1
  export PYTHONPATH=/tmp/site:$PWD
fi
if [ ! -f $B0/model.safetensors ]; then
  python3 -c "import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], 'wb'))" \
    $C/B0.safetensors.xz $B0/model.safetensors || exit 1
fi
mkdir -p "$W/squad" && for f in $C/squad/*.xz; do xz -dc "$f" > "$W/squad/$(basename "$f" .xz)" || exit 1; done
xz -dc $C/X2.json.xz > "$W/X2.json" || exit 1
python3 setup.py build_ext --inplace > "$L/build.log" 2>&1 || { log "build failed"; tail -20 "$L/build.log"; exit 1; }
python3 -c "import torch, transformers, quals_fast._core; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no cuda')" 2>&1 | tee -a "$OUT/main.log"
[ "${PIPESTATUS[0]}" = 0 ] || exit 1
log "setup done"

# name, decoder layers, peak lr, seed: the deeper decoder is the question; the three-layer run is
# the same continuation without it.
RUNS=("G6a 6 3e-4 341" "G6b 6 6e-4 342" "G3 3 3e-4 343")
# Session 35's second leg: RUNS_SPEC="name layers lr seed;..." replaces the runs, SOUP=1 averages
# their averages into one candidate (they share B0 as their start), and PAIRS=0 skips the screen.
if [ -n "${RUNS_SPEC:-}" ]; then IFS=';' read -r -a RUNS <<< "$RUNS_SPEC"; fi
SOUP=${SOUP:-0}
RUNS_ALL=("${RUNS[@]}")  # the soup replaces RUNS; the runs' own records still go back
# Session 36: TRAIN_EXTRA adds training options to every run (L: --label-smoothing 0.1).
TRAIN_EXTRA=${TRAIN_EXTRA:-}
# What the averaging must leave for the stages after it: the screen (about 80 s on the GPU) and
# the soup each need their share. Session 35's second leg reserved the screen's 200 s with no
# screen to run, and its timeouts killed every average.
AVG_RESERVE=$(( (PAIRS > 0 ? 160 : 0) + (SOUP == 1 ? 40 : 0) + 20 ))
for spec in "${RUNS[@]}"; do
  set -- $spec
  "${QF[@]}" train-qagen --output-dir "$W/$1" --init-from $B0 --data-dir "$W/squad" --source-bos \
    --answer-loss-weight 3 --freeze-embeddings --cross-attention-init self --max-source-len 512 \
    --max-target-len 64 --weight-decay 0.01 --warmup-steps 30 --batch-size "$BATCH" --steps "$STEPS" \
    --eval-every 100 --save-every "$SAVE" --keep-checkpoints 40 --val-examples "$VAL" --device "$DEVICE" \
    --dtype "$DTYPE" --threads "$THREADS" --no-progress --max-minutes "$TRAIN_MIN" --decoder-layers "$2" \
    --lr "$3" --seed "$4" $TRAIN_EXTRA > "$L/train-$1.log" 2>&1 &
done
wait
log "training done"

# Checkpoint averaging over the second half of each run (as for B0 and M).
for spec in "${RUNS[@]}"; do
  set -- $spec
  sel=$(python3 - "$W/$1/checkpoints" <<'EOF'
import sys
from pathlib import Path
steps = sorted(int(p.name.split("-")[1]) for p in Path(sys.argv[1]).glob("step-*"))
keep = [s for s in steps if s >= steps[-1] / 2] if steps else []
print(" ".join(f"{sys.argv[1]}/step-{s}" for s in keep))
EOF
)
  n=$(echo $sel | wc -w)
  if [ "$n" -ge 2 ]; then
    timeout "$(until_reserve $AVG_RESERVE)" "${QF[@]}" average-qagen $sel --base "$W/$1/best" --output "$W/avg-$1" --data-dir "$W/squad" --val-examples "$VAL" \
      --threads "$THREADS" > "$L/avg-$1.log" 2>&1 &
  else
    log "$1: $n checkpoints in its second half, not averaged"
  fi
done
wait
avgs=$(ls -d "$W"/avg-*/ 2>/dev/null | tr '\n' ' ')
log "averaging done: $(echo $avgs | wc -w) of ${#RUNS[@]} runs averaged"
if [ "$SOUP" = 1 ] && [ -n "$avgs" ]; then
  timeout "$(until_reserve 20)" "${QF[@]}" average-qagen $avgs --output "$W/avg-soup" --data-dir "$W/squad" --val-examples "$VAL" \
    --threads "$THREADS" > "$L/avg-soup.log" 2>&1
  RUNS=("soup")
  log "soup of $avgs done"
fi

# Screen on X2's first PAIRS pairs; whatever has not finished by the cut-off is not ranked.
for spec in "${RUNS[@]}"; do
  set -- $spec
  [ "$PAIRS" -gt 0 ] && [ -f "$W/avg-$1/model.safetensors" ] || continue
  timeout "$(until_reserve 35)" "${QF[@]}" eval-swaps --model "$W/avg-$1" --device "$DEVICE" --pairs-file "$W/X2.json" --pairs "$PAIRS" \
    --output "$L/X2-$1.json" --no-progress > "$L/screen-$1.log" 2>&1 &
done
wait
log "screening done"

# The pick: the largest mean gap on the screen (lowest validation loss if none was screened). Sent
# back as the tensors that differ from B0 (the frozen word embeddings do not), in parts the device
# transfer accepts.
python3 - "$W" "$OUT" $B0 "${RUNS[@]}" <<'EOF' 2>&1 | tee -a "$OUT/main.log"
import json, sys
from pathlib import Path
import torch
from safetensors.torch import load_file, save_file
work, out, b0 = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3])
rows = []
for spec in sys.argv[4:]:
    name = spec.split()[0]
    info_path = work / f"avg-{name}" / "training_info.json"
    if not info_path.is_file():
        continue
    row = {"name": name, "val_loss": json.loads(info_path.read_text())["val_loss"]}
    screen = work / "logs" / f"X2-{name}.json"
    if screen.is_file():
        s = json.loads(screen.read_text())
        row.update({k: s.get(k) for k in ("mean_gap", "ranked_right", "scored_pairs", "pairs")})
    rows.append(row)
for r in rows:
    print(r)
if not rows:
    sys.exit("nothing to send back")
screened = [r for r in rows if r.get("mean_gap") is not None]
pick = max(screened, key=lambda r: r["mean_gap"]) if screened else min(rows, key=lambda r: r["val_loss"])
print("pick", pick["name"], "by", "screen" if screened else "validation loss")
folder = work / f"avg-{pick['name']}"
base = load_file(str(b0 / "model.safetensors"))
new = load_file(str(folder / "model.safetensors"))
diff = {k: v for k, v in new.items() if k not in base or base[k].shape != v.shape or not torch.equal(base[k], v)}
print(f"{len(diff)} of {len(new)} tensors differ from B0")
save_file(diff, str(work / "pick.safetensors"), metadata={"format": "pt"})
(work / "logs" / "pick.json").write_text(json.dumps({"pick": pick, "rows": rows, "same_as_b0": sorted(set(new) - set(diff))}, indent=1))
EOF
if [ -f "$W/pick.safetensors" ]; then
  pick=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['pick']['name'])" "$L/pick.json")
  split -b 15M -d "$W/pick.safetensors" "$OUT/pick.safetensors.part"
  cp -r "$W/avg-$pick" "$W/meta" && rm "$W/meta/model.safetensors"
  for spec in "${RUNS_ALL[@]}"; do r=${spec%% *}; cp "$W/$r/best/training_info.json" "$W/meta/run-$r.json" 2>/dev/null; done
fi
log "packed"
tar cJf "$OUT/logs.tar.xz" -C "$W" logs $(cd "$W" && ls -d meta 2>/dev/null)
ls -la "$OUT"
