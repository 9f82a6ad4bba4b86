#!/usr/bin/env bash
# Does glibc's malloc cost the training step? (bash benchmarks/malloc_check.sh [PAIRS], alone)
# glibc serves blocks above its mmap threshold with fresh mmap'd pages and returns them on free,
# so every step's large activations (the softmax's (rows, classes) logits, 16-33 MB) fault their
# pages in anew. This alternates bench_train_step.py (gcnn only, the default's and gcnn-small's
# shapes) in processes with glibc's defaults (--malloc default) and with large blocks kept in the
# heap as train.py keeps them (--malloc keep: gcnn.allocator, mallopt at glibc's 32 MB maximum
# mmap threshold, no trimming, 512 MB top pad); the variants cannot share a process, so they
# alternate PAIRS times (default 3) and each line is one run, flagged when bench_train_step.py
# found the machine busy.
set -euo pipefail
cd "$(dirname "$0")/.."
pairs=${1:-3}
[[ "$pairs" =~ ^[1-9][0-9]?$ ]] || { echo "error: PAIRS must be 1..99" >&2; exit 2; }
echo "load average before: $(cut -d' ' -f1 /proc/loadavg) ($(nproc) cores)"
step() {
  python benchmarks/bench_train_step.py --shapes gcnn-8-small gcnn-small --no-plain --rounds 8 "$@" \
    | awk '/^gcnn-8-small/{s="gcnn-8-small"} /^gcnn-small/{s="gcnn-small"} /^\| gcnn \|/{printf "%s %s %s ms  ", s, $4, $6}
           /^warning:/{busy=1} END{print busy ? "(warning: the machine was busy during this run)" : ""}'
}
for ((i = 1; i <= pairs; i++)); do
  echo "glibc defaults: $(step --malloc default)"
  echo "large blocks kept: $(step --malloc keep)"
done
echo "load average after: $(cut -d' ' -f1 /proc/loadavg)"
