# Shared by the SmolLM2 accuracy sweeps (gpu_accuracy_sweep.sh, gpu_search_sweep.sh): the 40-window evaluation
# protocol, resumable timed steps and presets derived from configs/presets. Source it after setting OUT and RUNS.
export PYTHONPATH=.${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1
mkdir -p "$OUT" "$RUNS/presets" "$RUNS/logs"
MODEL=${MODEL:?the SmolLM2 .gguf path}
WT=$FLEXQ_DATA_DIR/wikitext-2-raw/wiki.test.raw
EVAL=(--ppl wikitext2 --seqlen 2048 --max-windows 40 --device cuda --dtype float32 --backend reference)
flexq() { python3 -m flexq_cli "$@"; }
timed() {  # timed NAME CMD...: run once (skip when $RUNS/NAME exists), wall seconds to times.tsv
  local name=$1; shift
  [ -e "$RUNS/$name" ] && return 0
  local t0=$(date +%s%N)
  "$@" > "$RUNS/logs/$name.log" 2>&1 || { echo "FAILED $name"; tail -3 "$RUNS/logs/$name.log"; return 1; }
  printf '%s\t%s\n' "$name" "$(( ($(date +%s%N) - t0) / 1000000 )) ms" >> "$RUNS/times.tsv"
}
preset() {  # preset NAME BASE KEY: VALUE ...: a YAML preset on top of configs/presets/BASE.yaml
  local name=$1 base=$2; shift 2
  grep -v '^#' "configs/presets/$base.yaml" | grep -vE "^($(printf '%s|' "${@%%:*}" | sed 's/|$//')):" > "$RUNS/presets/$name.yaml"
  printf '%s\n' "$@" >> "$RUNS/presets/$name.yaml"
}
