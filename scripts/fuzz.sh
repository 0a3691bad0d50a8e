#!/usr/bin/env bash
# Bounded fuzzing of every cargo-fuzz target in fuzz/ (the parsers of outside text: host
# configs, rules files, state records, iptables-save and iptables-restore output), for the
# test suite: SECONDS_PER_TARGET each (default 20), one target after another.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET]
#
# Each target starts from its seeds (fuzz/corpus/<target>) and writes what it finds into a
# temporary corpus, so a run never changes the tree. A crash, a timeout (one input over 10 s)
# or going over 2 GiB of RSS fails the run; libFuzzer saves the input under
# fuzz/artifacts/<target>/ (ignored by git) and this script prints its report and the command
# that replays it. Prints the executions per target and their total. Installs cargo-fuzz if
# missing. See fuzz/README.md.
set -euo pipefail
cd "$(dirname "$0")/.."

secs=${1:-20}
if ! [[ $secs =~ ^[1-9][0-9]*$ ]]; then
    echo "usage: $0 [SECONDS_PER_TARGET]" >&2
    exit 2
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "fuzz: installing cargo-fuzz from crates.io"
    cargo install cargo-fuzz --locked
fi

# Stable Rust only (CI has no nightly): cargo-fuzz's default AddressSanitizer is
# `-Zsanitizer=address`, a nightly flag; with `--sanitizer none` every flag it passes is stable
# (`-Cpasses=sancov-module`, `-Cllvm-args=-sanitizer-coverage-*`, `--cfg fuzzing`), so no
# RUSTC_BOOTSTRAP is needed. Safe Rust needs no ASan to be memory safe; what is lost is
# checking the C and unsafe code under the parsers (unsafe-libyaml-norway), which
# `cargo +nightly fuzz run T` (ASan) covers by hand. Debug assertions and overflow checks stay
# on (cargo-fuzz's default): an overflow is a crash here.
flags=(--sanitizer none)

start=$SECONDS
target_dir=$PWD/fuzz/target
cargo fuzz build "${flags[@]}" --target-dir "$target_dir"
echo "fuzz: built every target in $((SECONDS - start)) s"
targets=$(cargo fuzz list)
# The binaries are run directly (what `cargo fuzz run` does after its build): every target
# runs the build above, even while the crates are being edited.
bin_dir=$target_dir/$(rustc -vV | sed -n 's/^host: //p')/release

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

dict_of() {
    case $1 in
        router_config_*) echo router_config ;;
        rules_file_*) echo rules_file ;;
        rule_parser | save_parser) echo iptables ;;
        *) echo "$1" ;;
    esac
}

total=0
failed=()
printf '%-22s %12s %8s\n' target executions result
for t in $targets; do
    mkdir -p "$tmp/corpus/$t"
    seeds=()
    [[ -d fuzz/corpus/$t ]] && seeds=("fuzz/corpus/$t")
    args=(-max_total_time="$secs" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1)
    dict="$PWD/fuzz/dict/$(dict_of "$t").dict"
    [[ -f $dict ]] && args+=(-dict="$dict")
    log="$tmp/$t.log"
    # The temporary corpus comes first: libFuzzer writes new inputs (and removes reduced ones)
    # only in the first directory. TMPDIR: the state_files target makes its state directory
    # there, removed with the rest.
    mkdir -p "$tmp/artifacts/$t"
    rc=0
    TMPDIR="$tmp" "$bin_dir/$t" "${args[@]}" -artifact_prefix="$tmp/artifacts/$t/" \
        "$tmp/corpus/$t" "${seeds[@]}" >"$log" 2>&1 || rc=$?
    runs=$(sed -n 's/^stat::number_of_executed_units: *\([0-9]*\).*/\1/p' "$log" | tail -n1)
    [[ -n $runs ]] || runs=$(sed -n 's/^#\([0-9]*\)[[:space:]]*DONE.*/\1/p' "$log" | tail -n1)
    runs=${runs:-0}
    total=$((total + runs))
    if ((rc == 0)); then
        printf '%-22s %12s %8s\n' "$t" "$runs" ok
    else
        printf '%-22s %12s %8s\n' "$t" "$runs" "FAILED"
        failed+=("$t")
        echo "---- $t (exit $rc): libFuzzer's report ----"
        grep -v '^#[0-9]' "$log" | sed "s|$tmp/artifacts|fuzz/artifacts|g" | tail -n 60
        mkdir -p "fuzz/artifacts/$t"
        cp "$tmp/artifacts/$t/"* "fuzz/artifacts/$t/" 2>/dev/null || true
        echo "---- saved in fuzz/artifacts/$t/; replay: cargo fuzz run ${flags[*]} $t fuzz/artifacts/$t/<file> ----"
    fi
done
printf '%-22s %12s\n' total "$total"
echo "fuzz: $((SECONDS - start)) s in all"
if ((${#failed[@]})); then
    echo "fuzz: FAILED: ${failed[*]}" >&2
    exit 1
fi
