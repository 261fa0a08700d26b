#!/usr/bin/env bash
# The long randomized run of the reference model (tests/it/model.rs, the ignored test
# `model::model`), over many generator seeds: the nightly counterpart of `model_fixed_seeds`,
# which CI runs on a few fixed seeds. Run it as root (the model runs the overlay on real
# directories; no FUSE mount and no object-storage server is needed):
#
#     scripts/model-nightly.sh              # 20 seeds, from one derived from today's date
#     scripts/model-nightly.sh 50           # 50 seeds
#     scripts/model-nightly.sh 10 1000      # seeds 1000 to 1009 (to replay a night's run)
#     PROPTEST_CASES=200 scripts/model-nightly.sh   # cases per seed (default 48, ~30 s each)
#
# Each seed runs in its own test process, so one failure does not hide the next; a failure
# prints the minimal case proptest shrank it to (and the case it started from when shrinking
# does not reproduce it: the steps race real threads, so a seed is not a fixed path on a
# loaded machine). Replay one with
#     MODEL_SEED=N cargo nextest run --test it --run-ignored only -E 'test(=model::model)' \
#         --no-capture
# and pin what it finds as a plain #[test] at the end of tests/it/model.rs. Other variables of
# the model (RUST_LOG=etlfs=debug, MODEL_TRACE=1) pass through; cargo's CARGO_TARGET_DIR too.
#
# Exits 0 only if every seed passed; the last lines list the seeds that failed, with their logs
# (kept in MODEL_NIGHTLY_LOGS, default a fresh directory under /tmp).

set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

count=${1:-20}
# A new stretch of seeds every day (days since the epoch, times 1000), printed so that a
# night's run can be replayed.
first=${2:-$(($(date -u +%s) / 86400 * 1000))}
logs=${MODEL_NIGHTLY_LOGS:-$(mktemp -d /tmp/model-nightly.XXXXXX)}
mkdir -p "$logs"

[[ $count =~ ^[0-9]+$ && $first =~ ^[0-9]+$ ]] || {
    echo "usage: $0 [SEEDS [FIRST_SEED]]" >&2
    exit 2
}

echo "==> model: seeds $first to $((first + count - 1)), ${PROPTEST_CASES:-48} cases each; logs in $logs" >&2
# Build once, outside the timed runs.
cargo nextest run --test it --no-run

failed=()
for ((seed = first; seed < first + count; seed++)); do
    log=$logs/seed-$seed.log
    if MODEL_SEED=$seed cargo nextest run --test it --run-ignored only -E 'test(=model::model)' \
        --no-capture >"$log" 2>&1; then
        grep -m1 '^model (' "$log" >&2 || echo "seed $seed: passed" >&2
    else
        echo "seed $seed: FAILED (log: $log)" >&2
        failed+=("$seed")
    fi
done

if ((${#failed[@]})); then
    echo "==> model: ${#failed[@]} of $count seeds failed: ${failed[*]}" >&2
    for seed in "${failed[@]}"; do
        echo "    $logs/seed-$seed.log" >&2
    done
    exit 1
fi
echo "==> model: all $count seeds passed" >&2
