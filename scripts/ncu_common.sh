# Shared by the Nsight Compute scripts (gpu_btc_ncu.sh, gpu_int8_ncu.sh); source it.
# ncu_metrics EXTRA: EXTRA (comma-separated metrics) plus the per-issue warp stall ratios of NCU_STALLS, for --metrics
# ncu_run KERNEL_REGEX SKIP OUTFILE METRICS CMD...: one launch of the kernel (after SKIP launches), clocks left alone,
#   the sections the scripts read, to OUTFILE
NCU_STALLS=(long_scoreboard short_scoreboard barrier wait math_pipe_throttle mio_throttle lg_throttle not_selected
            no_instruction dispatch_stall membar sleeping tex_throttle drain selected)
ncu_metrics() {
  local m=$1 r
  for r in "${NCU_STALLS[@]}"; do m+=",smsp__average_warps_issue_stalled_${r}_per_issue_active.ratio"; done
  printf '%s' "$m"
}
ncu_run() {
  local kernel=$1 skip=$2 out=$3 metrics=$4; shift 4
  ncu --clock-control none -k "regex:$kernel" --launch-skip "$skip" --launch-count 1 \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section MemoryWorkloadAnalysis --section SchedulerStats --metrics "$metrics" "$@" > "$out" 2>&1
}
