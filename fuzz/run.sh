#!/usr/bin/env bash
# Fuzzes every target (or the ones named) for SECONDS each, two at a time (one
# per core), with overflow checks and debug assertions on (fuzz/Cargo.toml),
# no sanitizer (`-s none`: the crates are safe Rust) and an RSS limit of 2 GB,
# then prints each target's executions, coverage and crashes. Exits 1 when a
# target crashed; its input is in fuzz/artifacts/TARGET/.
#
# Usage: fuzz/run.sh [SECONDS] [TARGET...]      (default: 60 s, every target)
# See docs/testing.md ("Fuzzing").
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(jbin_read sim_run compile_verify jasm_assemble tir_check onnx_read)
fi
rustup toolchain list | grep -q '^nightly' || rustup toolchain install nightly --profile minimal
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked

# Seeds: the shipped examples and test cases, as text and as binaries.
cargo build --release -q -p jalc
seeds=fuzz/target/seeds
rm -rf "$seeds"
mkdir -p "$seeds"/{jbin_read,sim_run,compile_verify,jasm_assemble,tir_check,onnx_read} fuzz/logs
target/release/jalc asm examples/gemm-tiny.jasm -o "$seeds/jbin_read/gemm-tiny.jbin"
for jasm in testsuite/cases/jasm/*.jasm testsuite/cases/sim/*/*.jasm; do
    target/release/jalc asm "$jasm" -o "$seeds/jbin_read/$(basename "$jasm" .jasm).jbin" 2>/dev/null || true
done
for tir in testsuite/cases/tir/*.tir; do
    target/release/jalc compile "$tir" --target jpu-tiny -o "$seeds/jbin_read/$(basename "$tir" .tir).jbin" \
        2>/dev/null || true
done
cp "$seeds"/jbin_read/* "$seeds/sim_run/"
cp examples/*.jasm testsuite/cases/jasm/*.jasm "$seeds/jasm_assemble/"
cp examples/*.tir testsuite/cases/tir/*.tir "$seeds/tir_check/"
head -c 64 /dev/urandom > "$seeds/compile_verify/random" # any bytes make a program
cp testsuite/cases/onnx/*.onnx "$seeds/onnx_read/"

for t in "${targets[@]}"; do cargo +nightly fuzz build -s none "$t"; done
run() {
    local t=$1
    mkdir -p "fuzz/corpus/$t"
    cargo +nightly fuzz run -s none "$t" "fuzz/corpus/$t" "$seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -timeout=60 -print_final_stats=1 >"fuzz/logs/$t.log" 2>&1
}
pids=()
for t in "${targets[@]}"; do
    if [ ${#pids[@]} -ge 2 ]; then
        wait -n || true
        pids=("${pids[@]:1}")
    fi
    run "$t" &
    pids+=($!)
done
wait || true

status=0
printf '| target | seconds | executions | exec/s | coverage (edges) | corpus | crashes |\n|---|---|---|---|---|---|---|\n'
for t in "${targets[@]}"; do
    log="fuzz/logs/$t.log"
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo '?')
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | grep -o '[0-9]*' || echo '?')
    corpus=$(find "fuzz/corpus/$t" -type f | wc -l)
    crashes=$(find "fuzz/artifacts/$t" -type f 2>/dev/null | wc -l)
    printf '| %s | %s | %s | %s | %s | %s | %s |\n' "$t" "$secs" "$execs" "$rate" "$cov" "$corpus" "$crashes"
    if grep -q 'ERROR: libFuzzer\|panicked at\|==ERROR' "$log"; then
        status=1
        echo "  $t crashed: see $log and fuzz/artifacts/$t/" >&2
    elif [ "$execs" = '?' ]; then
        # No final stats and no crash: the target never ran (a missing seed
        # directory, a failed build); that is a failure, not a clean run.
        status=1
        echo "  $t did not run: see $log" >&2
    fi
done
exit $status
