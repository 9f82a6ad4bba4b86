#!/usr/bin/env bash
# The figures docs/performance.md keeps per CPU kind, measured on the machine at hand (about
# 20 minutes; run it alone on a quiet machine, from a clean tree):
#   bash benchmarks/cpu_kind_check.sh            # everything
#   bash benchmarks/cpu_kind_check.sh --no-default   # without the 9-minute default run
#   bash benchmarks/cpu_kind_check.sh --benches      # only the data, evaluation, sampling,
#                                                    # dropout and convolution benchmarks
#   bash benchmarks/cpu_kind_check.sh --emulate no-bf16   # (with either of the above, or alone)
#       as a CPU without avx512_bf16 would run (a Xeon of Skylake to Ice Lake): oneDNN capped
#       at AVX512_CORE_VNNI (ONEDNN_MAX_CPU_ISA), so its bf16 kernels convert to and from fp32
#       instead of using bf16 dot products. The code paths and the precision chooser's
#       decisions are that kind's; the speeds are this CPU's cores running them. Records go to
#       <cpu kind>-emulating-no-bf16/.
#   bash benchmarks/cpu_kind_check.sh --default-only --into NAME   # only the default run, its
#       records in <cpu kind>/NAME/ (again after a change, beside the first one's)
#   bash benchmarks/cpu_kind_check.sh --emulate no-amx    # on a CPU with AMX: as one with
#       avx512_bf16 and no AMX would run (a Xeon of Cooper Lake, or an EPYC of Zen 4 or 5):
#       oneDNN capped at AVX512_CORE_BF16, so its bf16 products use avx512_bf16 dot products
#       instead of AMX tiles.
#   bash benchmarks/cpu_kind_check.sh --emulate avx2      # as a CPU with AVX2 and nothing newer
#       (an EPYC of Zen 2 or 3, a Xeon of Haswell or Broadwell): oneDNN, ATen and MKL capped at
#       AVX2, so there is no bf16 path and auto trains in fp32 without measuring.
# Writes experiments/records/perf/<cpu kind>/: lscpu.txt, the per-op profiles of the training
# step against the plain port (both precisions; gcnn-small's, the default's and gcnn-8's
# shapes), the step's speed and MFU (bench_train_step), what glibc's malloc settings do to the
# step (malloc_check), the precision chooser quiet / busy / poisoned
# (precision_check), and the default run (`python train.py`) with its test perplexity.
set -euo pipefail
cd "$(dirname "$0")/.."
default=1 benches_only=0 default_only=0 emulate="" into=""
while (($#)); do
  case $1 in
    --no-default) default=0 ;;
    --benches) benches_only=1 ;;
    --default-only) default_only=1 ;;
    --into) into=${2:-}; shift ;;
    --emulate) emulate=${2:-}; shift ;;
    *) echo "cpu_kind_check.sh: unknown option $1" >&2; exit 2 ;;
  esac
  shift
done
if [[ -n $into && ! $into =~ ^[A-Za-z0-9][A-Za-z0-9._-]*$ ]]; then
  echo "cpu_kind_check.sh: --into takes a plain name (letters, digits, . _ -)" >&2; exit 2
fi
case $emulate in
  "") caps="" ;;
  no-amx) caps="ONEDNN_MAX_CPU_ISA=AVX512_CORE_BF16" ;;
  no-bf16) caps="ONEDNN_MAX_CPU_ISA=AVX512_CORE_VNNI" ;;
  avx2) caps="ONEDNN_MAX_CPU_ISA=AVX2 ATEN_CPU_CAPABILITY=avx2 MKL_ENABLE_INSTRUCTIONS=AVX2" ;;
  *) echo "cpu_kind_check.sh: --emulate takes no-amx, no-bf16 or avx2" >&2; exit 2 ;;
esac
for cap in $caps; do export "${cap?}"; done
# the kind: model name, family/model numbers (a VM may show only "AMD EPYC"), AMX or not
kind=$(python -c "
import re
from gcnn.machine import cpu_flags, cpu_model
info = dict(l.split(':', 1) for l in open('/proc/cpuinfo') if ':' in l)
fm = ' f%s m%s' % (info.get('cpu family\t', '?').strip(), info.get('model\t\t', '?').strip())
amx = ' amx' if any(f.startswith('amx') for f in cpu_flags()) else ''
print(re.sub('[^a-z0-9]+', '-', (cpu_model() + fm + amx).lower()).strip('-'))")
out="experiments/records/perf/$kind${emulate:+-emulating-$emulate}${into:+/$into}"
# the commit measured, taken before this script writes its first record (which would make every
# later `git describe --dirty` say dirty)
commit=$(git describe --always --dirty)
mkdir -p "$out"
echo "records in $out, from $commit"
{ date -u +%FT%TZ; echo "$commit"; lscpu
  if [[ -n $emulate ]]; then echo "emulating $emulate: $caps"; fi
} > "$out/lscpu.txt"
# the benchmarks of docs/performance.md's last tables: exact perplexity's cost, tokenizing and
# caching, building a batch, sampling, a dropout mask, and the convolutions against unfolded
# matrix products (each output headed by its command and commit)
header() {  # the line each record starts with: "$ [CAPS] COMMAND  (DATE, COMMIT)"
  echo "\$ ${caps:+$caps }$*  ($(date -u +%FT%TZ), $commit)"
}
record() {  # record FILE COMMAND..: its output, headed by the command and commit, into $out/FILE
  local file=$1; shift
  { header "$@"; "$@" 2>&1 | grep -v '^USDT'; } | tee "$out/$file"
}
bench() {
  record "$1.txt" python "benchmarks/$1.py" "${@:2}"
}
if ((!default_only)); then
  bench bench_perplexity
  bench bench_data
  bench bench_batches
  bench bench_sampling
  bench bench_dropout
  bench bench_conv
  if ((benches_only)); then exit 0; fi
  for shape in gcnn-small gcnn-8-small gcnn-8; do
    record "profile-$shape.txt" \
      python benchmarks/profile_train_step.py --shape "$shape" --json "$out/profile-$shape.json"
  done
  record bench_train_step.txt \
    python benchmarks/bench_train_step.py --shapes gcnn-small gcnn-8-small gcnn-8
  record malloc_check.txt bash benchmarks/malloc_check.sh 3
  record precision_check.txt \
    python benchmarks/precision_check.py --json "$out/precision_check.json"
fi
if ((default)); then
  run="runs/cpu-kind-default-$(date -u +%Y%m%dT%H%M%S)"
  # headed as record()'s files are: summarize_default_run.py takes the run's commit from it
  { header python train.py --no-progress --out "$run"
    /usr/bin/time -v python train.py --no-progress --out "$run"; } 2>&1 \
    | grep -v '^\s*\(Average\|Exit status\|Socket\|Signals\|Swaps\|File system\|Page size\|Major\|Minor\|Voluntary\|Involuntary\|Percent\|System time\|User time\|Average\)' \
    | tee "$out/default-train.txt"
  cp "$run/metrics.jsonl" "$out/default-metrics.jsonl"
  cp "$run/config.toml" "$out/default-config.toml"
  python evaluate.py perplexity "$run/checkpoint_best.pt" --split test --json \
    | tee "$out/default-test.json"
  python experiments/summarize_default_run.py "$out"  # default-run.json: the figures in one record
fi
