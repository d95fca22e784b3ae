#!/usr/bin/env bash
# Lite0 bank vs DINOv2 bank (issue 20 part 1): the table "DINOv2 patch features" of
# models/README.md.
#
#   bash models/evaluate-dinov2.sh [out-dir]   (from the repository root; ~1 h on 2 busy cores)
#
# For each extractor (lite0, dinov2), shot count (1, 4) and shot seed (0, 1, 2): one
# `eval --shots` run (one bank, coreset seed 0; MAEDAY at N = 8 alongside, so the report
# also holds MAEDAY alone and MAEDAY + bank) on magnetic tiles (100 defective + 100 MT_Free,
# `--limit 100 --seed 0`), floor hazards and the conveyor clip (frames 2-22 with the bolt
# vs the empty belt, 0 and 24-36; 1 and 23 show only its edge and are left out), squash fit.
# The synthetic foreign-object set (3 scenes, `synth-fod --seed 0`, built under out-dir
# unless SYNTH names it) likewise, per scene. Then the table: mean ± std over the three shot
# seeds (synthetic: per seed, the mean over the scenes first). SETS (mt floor conveyor synth) and
# EXTRACTORS (dinov2 lite0) pick a part, e.g. to run two in parallel (the DINOv2 extractor
# runs on one core).
# Needs ../shared/data and the release binary (built here if missing).
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-eval-runs/dinov2}
DATA=${DATA:-../shared/data}
BIN=${BIN:-${CARGO_TARGET_DIR:-target}/release/maeday-edge}
PY=${PYTHON:-python3}
VPY=${VENV_PYTHON:-$HOME/.cache/maeday-ci/venv/bin/python}
SYNTH=${SYNTH:-$OUT/synth}
SCENES="woodenFloor pavingStone greyTile"
[ -x "$BIN" ] || cargo build --release
mkdir -p "$OUT"
case " ${SETS:-mt floor conveyor synth} " in
  *" synth "*) [ -d "$SYNTH" ] || "$VPY" -m models.workstation synth-fod --seed 0 --out "$SYNTH" ;;
esac
CONV=$OUT/conveyor-frames
if [ ! -d "$CONV" ]; then
  "$PY" - "$DATA/conveyor/bolt-multi-size-detection.gif" "$CONV" <<'PY'
import sys, pathlib
from PIL import Image, ImageSequence
gif, out = sys.argv[1], pathlib.Path(sys.argv[2])
for i, f in enumerate(ImageSequence.Iterator(Image.open(gif))):
    label = "bolt" if 2 <= i <= 22 else "good" if i == 0 or i >= 24 else None
    if label:
        (out / label).mkdir(parents=True, exist_ok=True)
        f.convert("RGB").save(out / label / f"f{i:02d}.png")
PY
fi

ev() { # ev <report-name> <dataset> [eval options...]
  local name=$1 data=$2; shift 2
  if [ -s "$OUT/$name.json" ]; then echo "have $OUT/$name.json"; return; fi
  echo "== $name $(date +%T)"
  "$BIN" eval --report "$OUT/$name.json" --dataset "$data" --masks 8 \
    --bank-seeds 0 --pixel-budget 16384 "$@" | grep -E "AUROC|^  (maeday|bank)" || true
}

for set in ${SETS:-mt floor conveyor synth}; do
  for shots in 1 4; do
    for s in 0 1 2; do
      for ex in ${EXTRACTORS:-dinov2 lite0}; do
        case $set in
          mt) ev "$ex-mt-${shots}shot-s$s" "$DATA/magnetic-tile" --limit 100 --seed 0 \
                --shots "$shots" --shot-seed "$s" --extractor "$ex" ;;
          floor) ev "$ex-floor-${shots}shot-s$s" "$DATA/floor-hazards" \
                --shots "$shots" --shot-seed "$s" --extractor "$ex" ;;
          conveyor) ev "$ex-conveyor-${shots}shot-s$s" "$CONV" \
                --shots "$shots" --shot-seed "$s" --extractor "$ex" ;;
          synth) for scene in $SCENES; do
                   ev "$ex-synth-$scene-${shots}shot-s$s" "$SYNTH/$scene" \
                     --shots "$shots" --shot-seed "$s" --extractor "$ex"
                 done ;;
        esac
      done
    done
  done
done

"$PY" - "$OUT" <<'PY'
import json, statistics, sys, pathlib
out = pathlib.Path(sys.argv[1])
def cell(vals):
    vals = [v for v in vals if v is not None]
    if not vals: return "n/a"
    sd = statistics.stdev(vals) if len(vals) > 1 else 0.0
    return f"{statistics.mean(vals):.3f} ± {sd:.3f}"
rows = [("MAEDAY alone (zero-shot, N = 8)", "lite0", "maeday"),
        ("Lite0 bank", "lite0", "bank0"), ("DINOv2 bank", "dinov2", "bank0"),
        ("MAEDAY + Lite0 bank", "lite0", "maeday+bank0"),
        ("MAEDAY + DINOv2 bank", "dinov2", "maeday+bank0")]
SCENES = ["woodenFloor", "pavingStone", "greyTile"]
def load(ex, data, k, s):
    """One report, or for the synthetic set the scenes' mean of every scorer metric."""
    if data != "synth":
        return json.load(open(out / f"{ex}-{data}-{k}shot-s{s}.json"))
    reps = [json.load(open(out / f"{ex}-synth-{sc}-{k}shot-s{s}.json")) for sc in SCENES]
    merged = json.loads(json.dumps(reps[0]))
    for key, sc in merged["scorers"].items():
        for m, v in sc.items():
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                sc[m] = statistics.mean(r["scorers"][key][m] for r in reps)
    return merged
def have(ex, data, k, s):
    names = [f"synth-{sc}" for sc in SCENES] if data == "synth" else [data]
    return all((out / f"{ex}-{n}-{k}shot-s{s}.json").exists() for n in names)
lines = []
for data, metrics in [("mt", ["image_auroc", "pixel_auroc", "pro_0_3"]),
                      ("floor", ["image_auroc"]), ("conveyor", ["image_auroc"]),
                      ("synth", ["image_auroc", "pixel_auroc", "pro_0_3"])]:
    if not all(have(ex, data, k, s)
               for ex in ("lite0", "dinov2") for k in (1, 4) for s in (0, 1, 2)):
        lines.append(f"\n{data}: incomplete"); continue
    head = ["scorer"] + [f"{k} shot {m.replace('_auroc','').replace('pro_0_3','PRO')}"
                         for k in (1, 4) for m in metrics]
    lines += [f"\n{data}\n", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, ex, key in rows:
        cells = []
        for k in (1, 4):
            reps = [load(ex, data, k, s) for s in (0, 1, 2)]
            for m in metrics:
                cells.append(cell([r["scorers"][key][m] for r in reps]))
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    for ex in ("lite0", "dinov2"):
        reps = [load(ex, data, k, s) for k in (1, 4) for s in (0, 1, 2)]
        t = reps[0]["timings"]
        lines.append(f"\n{ex}: bank rows {[r['bank_rows'][0] for r in reps]}; "
                     f"features ms/image {statistics.mean(r['timings']['features_ms_mean'] for r in reps):.0f}, "
                     f"kNN {statistics.mean(r['timings']['knn_ms_mean'] for r in reps):.1f}, "
                     f"MAEDAY inference {statistics.mean(r['timings']['inference_ms_mean'] for r in reps):.0f}; "
                     f"images scored {reps[0]['counts']['scored']} (1 shot), {reps[3]['counts']['scored']} (4 shots)")
text = "\n".join(lines) + "\n"
(out / "table.md").write_text(text)
print(text)
PY
