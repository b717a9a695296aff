# Shared by the device scripts that run compute-sanitizer (gpu_kernel_check.sh, gpu_int8_gemv_check.sh); source it
# after setting OUT, PY and the summary array.
# sanitize SCRIPT: memcheck and racecheck over `$PY SCRIPT`, logs in $OUT/sanitizer_<tool>.txt, one summary line per
# tool appended to the caller's summary array.
sanitize() {
  local tool
  for tool in memcheck racecheck; do
    compute-sanitizer --tool $tool --error-exitcode 9 $PY "$1" > "$OUT/sanitizer_$tool.txt" 2>&1
    summary+=("sanitizer $tool: rc=$? $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$OUT/sanitizer_$tool.txt" |
              tail -1)")
  done
}
