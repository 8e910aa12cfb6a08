#!/usr/bin/env bash
# The one script to run on a GPU machine: GPU tests, every benchmark suite, the report. Target: < 5 minutes.
#
#   bash bench/gpu_check.sh [OUTDIR]        # default OUTDIR: gpu-check-<UTC date>
#
# Runs from the checkout without installing anything (PYTHONPATH=repo root). Everything it writes goes under
# OUTDIR: env.txt (nvidia-smi, versions, date), gpu_tests.log/.xml, bench-<suite>.json/.log per suite, run.log
# (progress), phases.md (phase, exit code, seconds) and the report <YYYY-MM-DD>-<gpu>.md. Commit that report as
# bench/results/<YYYY-MM-DD>-<gpu>.md and quote it in the README's performance section. In a copy of the checkout
# without .git, pass the commit: DEBLURGAN_COMMIT=<sha> bash bench/gpu_check.sh OUTDIR.
#
# Every phase has its own time limit, so a slow or hanging suite costs its own results only; its limit and exit
# code appear in the report's run log. Limits (seconds) can be overridden: GPU_TESTS_S, GPU_TESTS_SLOW_S,
# BENCH_S_<SUITE> (e.g. BENCH_S_INFERENCE=90), BUDGET_S (whole run, default 280). A larger BUDGET_S stretches every
# phase limit in proportion (BUDGET_S=540: each phase gets 540/280 of its limit, default or override: set one or
# the other), which is how to give
# compile-heavy phases room on a machine with time to spare; without CUDA every limit is multiplied by CPU_SCALE
# (default 4). Exit status: 0 when every phase passed, 1 otherwise.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="${1:-gpu-check-$(date -u +%F)}"
mkdir -p "$OUT" || { echo "error: cannot create $OUT" >&2; exit 2; }
OUT="$(cd "$OUT" && pwd)"
cd "$ROOT" || exit 2

export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONDONTWRITEBYTECODE=1 OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"  # see bench/conftest.py
SCRATCH="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"  # compile caches: large, not results
export TORCHINDUCTOR_CACHE_DIR="$SCRATCH/inductor" TRITON_CACHE_DIR="$SCRATCH/triton"
trap 'rm -rf "$SCRATCH"' EXIT
PY="${PYTHON:-$(command -v python3 || command -v python)}"  # the environment's python (override: PYTHON=...)
BASE_BUDGET_S=280
BUDGET_S="${BUDGET_S:-$BASE_BUDGET_S}"  # + at most one 20 s SIGINT grace: about 5 minutes by default
STRETCH_PCT=$((BUDGET_S * 100 / BASE_BUDGET_S))  # default phase limits scale with the budget
START=$SECONDS
FAILED=0
SCALE=1
: >"$OUT/phases.md"
: >"$OUT/run.log"

log() { echo "[gpu_check $(date -u +%T)] $*" | tee -a "$OUT/run.log" >&2; }

# phase NAME LIMIT_S CMD...: run with a time limit (SIGINT first, so pytest still writes its JSON), record rc + time.
phase() {
    local name="$1" limit=$(($2 * SCALE * STRETCH_PCT / 100)) left rc t0
    shift 2
    left=$((BUDGET_S - (SECONDS - START)))
    if ((left < 15)); then
        echo "| $name | not run: time budget spent | - | - |" >>"$OUT/phases.md"
        log "$name: not run (budget spent)"
        FAILED=1
        return
    fi
    ((limit > left)) && limit=$left
    log "$name (limit ${limit}s)"
    t0=$SECONDS
    timeout -s INT -k 20 "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    local summary
    summary="$(grep -E '^(=+ )?[0-9]+ (passed|failed|skipped|error)|no tests ran|(passed|failed|skipped).* in [0-9.]+s' "$OUT/$name.log" | tail -1 | tr -d '=|' | xargs)"
    ((rc == 124 || rc == 130 || rc == 137)) && summary="TIMEOUT after ${limit}s; $summary"
    echo "| $name | $rc | $((SECONDS - t0)) | ${summary:--} |" >>"$OUT/phases.md"
    log "$name: rc=$rc in $((SECONDS - t0))s ${summary}"
    ((rc == 0 || rc == 5)) || FAILED=1  # 5 = no tests collected (e.g. no GPU tests yet)
}

# --- environment -------------------------------------------------------------------------------------------------
{
    echo "date: $(date -u +%FT%TZ)"
    if git rev-parse HEAD >/dev/null 2>&1; then
        echo "commit: $(git rev-parse HEAD)$(git diff --quiet 2>/dev/null || echo ' (dirty)')"
    else
        echo "commit: ${DEBLURGAN_COMMIT:-unknown} (no git)"
    fi
    echo "nvidia-smi: $(nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv,noheader 2>/dev/null | head -1 || true)"
    "$PY" - <<'EOF'
import json
from bench.timing import environment
print(json.dumps(environment(), indent=1))
EOF
} >"$OUT/env.txt" 2>&1
{ echo; nvidia-smi 2>&1 || echo "nvidia-smi: not available"; } >>"$OUT/env.txt"
GPU_NAME="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)"
[[ -n "$GPU_NAME" ]] || GPU_NAME="$("$PY" -c 'import torch; print(torch.cuda.get_device_name(0))' 2>/dev/null)"
SLUG="$(echo "${GPU_NAME:-cpu}" | tr '[:upper:]' '[:lower:]' | sed -E 's/[^a-z0-9]+/-/g; s/^-+|-+$//g')"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)'; then
    log "WARNING: no CUDA device visible to torch: this will be a CPU run (tiny shapes), labelled as such"
    SLUG="cpu"
    SCALE="${CPU_SCALE:-4}"  # shared CPU machines are slow and noisy: relax every limit
    BUDGET_S=$((BUDGET_S * SCALE))
fi
log "device: ${GPU_NAME:-none} -> report slug '$SLUG'; output in $OUT"

# --- GPU tests ---------------------------------------------------------------------------------------------------
# compile-heavy GPU tests (marked slow too) run after the benchmarks, so they cannot starve the report
phase gpu_tests "${GPU_TESTS_S:-45}" "$PY" -m pytest tests -m "gpu and not slow" -q -rs -p no:cacheprovider \
    --junitxml="$OUT/gpu_tests.xml"

# --- benchmarks: one pytest per suite, so a slow suite cannot take the others' results with it -----------------------
# default limits (s); with the two GPU test phases they add up to a little more than BUDGET_S (the last phase
# gets what is left). Compile-heavy suites get the most.
declare -A DEFAULT_S=([models]=30 [blur]=15 [kernels]=55 [train]=45 [inference]=75 [deblur]=15)
suites=()
# headline first, cheap suites before expensive ones
for s in models blur kernels train inference deblur; do [[ -f bench/test_bench_$s.py ]] && suites+=("$s"); done
for f in bench/test_bench_*.py; do
    s="${f#bench/test_bench_}"
    s="${s%.py}"
    [[ " ${suites[*]} " == *" $s "* ]] || suites+=("$s")
done
jsons=()
for s in "${suites[@]}"; do
    var="BENCH_S_${s^^}"
    phase "bench-$s" "${!var:-${DEFAULT_S[$s]:-30}}" "$PY" -m pytest "bench/test_bench_$s.py" --benchmark -q -rs \
        -p no:cacheprovider --benchmark-json="$OUT/bench-$s.json" --benchmark-columns=min,median,max,rounds
    [[ -s "$OUT/bench-$s.json" ]] && jsons+=("$OUT/bench-$s.json")
done

phase gpu_tests_slow "${GPU_TESTS_SLOW_S:-40}" "$PY" -m pytest tests -m "gpu and slow" -q -rs -p no:cacheprovider \
    --junitxml="$OUT/gpu_tests_slow.xml"

# --- report -----------------------------------------------------------------------------------------------------------
REPORT="$OUT/$(date -u +%F)-$SLUG.md"
if ((${#jsons[@]})); then
    if "$PY" -m bench.report "${jsons[@]}" --out "$REPORT"; then
        {
            echo
            echo "## Run log (bench/gpu_check.sh)"
            echo
            echo "Total $((SECONDS - START)) s. Exit code 0 = passed, 5 = nothing collected, 124/130 = time limit."
            echo
            echo "| phase | exit code | seconds | pytest summary |"
            echo "| --- | --- | --- | --- |"
            cat "$OUT/phases.md"
            echo
            echo "Skipped, as pytest reported them:"
            echo
            echo '```'
            grep -h '^SKIPPED' "$OUT"/*.log | sort | uniq | cut -c1-200 || true
            echo '```'
        } >>"$REPORT"
        log "report: $REPORT  (commit it as bench/results/$(basename "$REPORT"))"
    else
        FAILED=1
    fi
else
    log "no benchmark results: no report"
    FAILED=1
fi
log "done in $((SECONDS - START)) s, $([[ $FAILED == 0 ]] && echo 'all phases passed' || echo 'SOME PHASES FAILED: see phases.md and the logs')"
exit "$FAILED"
