# Sourced by the bench_*_compare.sh scripts: `run <label> <command...>` runs
# one benchmark invocation, appends its RESULT line to "$out" and prints it,
# or prints the stderr tail when there is none. The caller sets out, log
# and err (temporary files).
run() {
  local label="$1" status=0; shift
  echo "# $label, load: $(cut -d' ' -f1-3 /proc/loadavg)"
  "$@" >"$log" 2>"$err" || status=$?
  if ! grep '^RESULT' "$log" | tee -a "$out"; then
    echo "# $label: no RESULT line (exit $status); stderr tail:"
    tail -n 5 "$err" | sed 's/^/#   /'
  elif [ "$status" -ne 0 ]; then
    echo "# $label: exit $status"
  fi
}
