#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS each, one after the other.
#
#   fuzz/run.sh [SECONDS] [TARGET...]      # SECONDS defaults to 600
#
# Needs a nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`). Set
# CARGO_TARGET_DIR to keep the build away from the root package's target dir (default:
# fuzz/target). Each target runs single-process (-jobs=1 -workers=1) with its corpus in
# fuzz/corpus/TARGET (new inputs land there), read-only seeds from fuzz/seeds/TARGET and a
# dictionary from fuzz/dicts/TARGET.dict when those exist. Crashes go to
# fuzz/artifacts/TARGET/, libFuzzer's output to fuzz/logs/TARGET.log, and one summary line
# per target to fuzz/logs/summary.txt. Exits non-zero if any target crashed.
set -euo pipefail

seconds=${1:-600}
shift || true
here=$(cd "$(dirname "$0")" && pwd)
all=(config rewrite handshake path)
targets=("${@:-${all[@]}}")
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$here/target}

# The default build: release, with debug assertions, overflow checks and AddressSanitizer.
# Everything is built first and the binaries are then run directly, so that a src/ edited
# meanwhile never stops (or changes) a run halfway through the list.
for t in "${targets[@]}"; do
    cargo +nightly fuzz build --fuzz-dir "$here" "$t"
done
bin_dir=$CARGO_TARGET_DIR/$(rustc +nightly -vV | sed -n 's/^host: //p')/release

mkdir -p "$here/logs"
commit=$(git -C "$here" describe --always --dirty 2>/dev/null || echo unknown)
status=0
for t in "${targets[@]}"; do
    corpus=$here/corpus/$t
    mkdir -p "$corpus" "$here/artifacts/$t"
    inputs=("$corpus")
    [[ -d $here/seeds/$t ]] && inputs+=("$here/seeds/$t")
    flags=(-max_total_time="$seconds" -jobs=1 -workers=1 -timeout=10 -print_final_stats=1)
    [[ -f $here/dicts/$t.dict ]] && flags+=(-dict="$here/dicts/$t.dict")
    crashes_before=$(find "$here/artifacts/$t" -type f | wc -l)
    start=$(date +%s)
    # With -jobs, libFuzzer writes the fuzzing process's output to fuzz-0.log in the
    # working directory: run from logs/ and keep that file as logs/TARGET.log.
    (
        cd "$here/logs"
        rm -f fuzz-0.log
        rc=0
        ASAN_OPTIONS=${ASAN_OPTIONS:-detect_odr_violation=0} "$bin_dir/$t" \
            -artifact_prefix="$here/artifacts/$t/" "${flags[@]}" "${inputs[@]}" \
            >"$t.driver.log" 2>&1 || rc=$?
        mv -f fuzz-0.log "$t.log" 2>/dev/null || cp "$t.driver.log" "$t.log"
        echo "$rc" >"$t.rc"
    )
    rc=$(cat "$here/logs/$t.rc")
    elapsed=$(($(date +%s) - start))
    log=$here/logs/$t.log
    execs=$({ grep -a 'stat::number_of_executed_units' "$log" || true; } | tail -1 | awk '{print $2}')
    [[ -n $execs ]] || execs=$({ grep -ao '^#[0-9]*' "$log" || true; } | tail -1 | tr -d '#')
    corpus_files=$(find "$corpus" -type f | wc -l)
    crashes=$(($(find "$here/artifacts/$t" -type f | wc -l) - crashes_before))
    fuzzed=$({ grep -ao 'Done [0-9]* runs in [0-9]* second' "$log" || true; } | tail -1 | awk '{print $5}')
    line="$t: fuzzed ${fuzzed:-?}s (${elapsed}s in all), ${execs:-?} execs, corpus $corpus_files files, $crashes new crashes, exit $rc"
    echo "$(date -u +%FT%TZ) $commit $line" | tee -a "$here/logs/summary.txt"
    if ((crashes > 0 || rc != 0)); then
        status=1
        grep -a -m1 -A3 'panicked at\|ERROR' "$log" || true
    fi
done
exit $status
