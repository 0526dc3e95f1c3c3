#!/usr/bin/env bash
# bench/compare.sh — cnnc, PyTorch and JAX side by side on d2l's LeNet (models/lenet.cnn:
# sigmoid, average pooling, SGD lr 0.9, Fashion-MNIST), in one run, one program at a time on the
# same cores, printed as one table with a row per framework (issue 7, point 6).
#
# Where each number comes from:
#   cnnc     `cnnc bench models/lenet.cnn --batch B --threads N --format json`, B = 256, 64, 1
#              train img/s  = train_images_per_second (forward + loss + backward + SGD update,
#                             on one fixed batch, steady state)
#              infer ms     = 1000 · B / infer_images_per_second
#              compile s    = compile_seconds (JIT of every forward and backward kernel, B = 256)
#            with --full: `cnnc run models/lenet.cnn --data FASHION_MNIST --threads N --log FILE`,
#            timed here; final
#            test accuracy = `test_acc` of the log's last line.
#   PyTorch  lenet_torch.py of ../shared/peers (see its README), `--json FILE`
#              train img/s  = train.img_per_s_median_excl_first (median epoch of real data,
#                             epoch 1 excluded), runs with `--mode train --batch B`
#              infer ms     = infer.batch1.median_ms, infer.batch256.median_ms (`--mode infer`)
#              compile s    = - (eager)
#            with --full: a 10-epoch run at batch 256 timed here; train.final_test_acc.
#   JAX      lenet_jax.py, the same keys; compile s = compile_train_s (XLA, the train step).
#
# Usage: bench/compare.sh [--threads N] [--epochs E] [--full] [--no-build]
#   --threads N   threads for every framework (default 2, the whole machine)
#   --epochs E    epochs of the peers' throughput runs (default 3; epoch 1 is excluded)
#   --full        also the end-to-end 10-epoch run of each framework (wall time, accuracy)
#   --no-build    use target/release/cnnc as it is
# Environment:
#   PEERS_PYTHON  Python with torch (and jax, for the JAX row); default /work/peers-venv/bin/python
#                 or ../peers-venv/bin/python. Without it the peers' rows are skipped.
#   PEERS_DIR     the peers' scripts; default ../shared/peers, or /work/shared/peers
#   FASHION_MNIST IDX folder; default /usr/share/datasets/fashion-mnist
#   CNNC_DATA     cnnc's data folder for --full; by default a temporary one linking FASHION_MNIST
#
# Run it on an idle machine (`uptime` is printed) and compare figures only within one run: the
# host is shared and its speed drifts.
set -euo pipefail

threads=2
epochs=3
full=false
build=true
while [[ $# -gt 0 ]]; do
    case "$1" in
        --threads) threads="$2"; shift 2 ;;
        --epochs) epochs="$2"; shift 2 ;;
        --full) full=true; shift ;;
        --no-build) build=false; shift ;;
        -h|--help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
        *) echo "compare.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
    esac
done

repo="$(cd "$(dirname "$0")/.." && pwd)"
if [[ -z "${PEERS_DIR:-}" ]]; then
    for candidate in "$repo/../shared/peers" /work/shared/peers; do
        if [[ -d "$candidate" ]]; then PEERS_DIR="$candidate"; break; fi
    done
fi
peers="${PEERS_DIR:-$repo/../shared/peers}"
fashion="${FASHION_MNIST:-/usr/share/datasets/fashion-mnist}"
if [[ -z "${PEERS_PYTHON:-}" ]]; then
    for candidate in /work/peers-venv/bin/python "$repo/../peers-venv/bin/python"; do
        if [[ -x "$candidate" ]]; then PEERS_PYTHON="$candidate"; break; fi
    done
fi
PEERS_PYTHON="${PEERS_PYTHON:-}"
py=python3  # for this script's own arithmetic and JSON reading
cnnc="$repo/target/release/cnnc"
model="$repo/models/lenet.cnn"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

notes=()
have_torch=false
have_jax=false
if [[ -z "$PEERS_PYTHON" ]]; then
    notes+=("No PEERS_PYTHON: the PyTorch and JAX rows are skipped. Create the venv as" \
        "$peers/README.md says (python3 -m venv peers-venv; peers-venv/bin/pip install numpy" \
        "torch \"jax[cpu]\") and set PEERS_PYTHON=peers-venv/bin/python.")
elif [[ ! -f "$peers/lenet_torch.py" ]]; then
    notes+=("No $peers/lenet_torch.py: set PEERS_DIR; the peers' rows are skipped.")
else
    if "$PEERS_PYTHON" -c 'import torch' 2>/dev/null; then have_torch=true; else
        notes+=("$PEERS_PYTHON cannot import torch: the PyTorch row is skipped (pip install torch).")
    fi
    if "$PEERS_PYTHON" -c 'import jax' 2>/dev/null; then have_jax=true; else
        notes+=("$PEERS_PYTHON cannot import jax: the JAX row is skipped (pip install \"jax[cpu]\").")
    fi
fi

# json FILE KEY.PATH — one number from a JSON file ("-" when the key is missing).
json() {
    "$py" - "$1" "$2" <<'EOF'
import json, sys
try:
    value = json.load(open(sys.argv[1]))
    for key in sys.argv[2].split("."):
        value = value[key]
    print("-" if value is None else value)
except (OSError, ValueError, KeyError, TypeError):
    print("-")
EOF
}

# last_log_value FILE KEY — KEY of the last JSON line of a --log file.
last_log_value() {
    "$py" - "$1" "$2" <<'EOF'
import json, sys
try:
    lines = [l for l in open(sys.argv[1]) if l.strip()]
    print(json.loads(lines[-1])[sys.argv[2]])
except (OSError, ValueError, KeyError, IndexError):
    print("-")
EOF
}

# div A B — A / B, or "-" when either is missing.
div() {
    if [[ "$1" == "-" || "$2" == "-" ]]; then echo "-"; return; fi
    "$py" -c "print($1 / $2)"
}

now() { date +%s.%N; }
# since START — seconds elapsed since START (a `now`).
since() { "$py" -c "print($(now) - $1)"; }

commands=()
# record CMD... — prints and remembers a command, then runs it.
record() {
    commands+=("$*")
    echo "== $*" >&2
    "$@"
}

cpu="$(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')"
echo "== $(date -u '+%Y-%m-%d %H:%M UTC')  $(uname -n)  nproc $(nproc)  $cpu  threads=$threads"
load_before="$(uptime | sed 's/.*load average: //')"
echo "== uptime: load average $load_before"

if $build; then
    echo "== cargo build --release"
    (cd "$repo" && cargo build --release --quiet)
fi

# Each framework's figures, in an associative array: train256 train64 (img/s), infer1
# infer256 (ms), compile (s), wall (s), acc.
blank() {
    local -n R="$1"
    R[train256]="-"; R[train64]="-"; R[infer1]="-"; R[infer256]="-"
    R[compile]="-"; R[wall]="-"; R[acc]="-"
}

# ---- cnnc ------------------------------------------------------------------------------
declare -A C
blank C
for b in 256 64 1; do
    if record "$cnnc" bench "$model" --batch "$b" --threads "$threads" --format json \
        > "$work/cnnc_$b.json"; then
        [[ $b == 1 ]] || C[train$b]="$(json "$work/cnnc_$b.json" train_images_per_second)"
        [[ $b == 64 ]] || C[infer$b]="$(div "$((1000 * b))" \
            "$(json "$work/cnnc_$b.json" infer_images_per_second)")"
    fi
done
C[compile]="$(json "$work/cnnc_256.json" compile_seconds)"
peak="$(json "$work/cnnc_256.json" peak_bytes)"
peak_unshared="$(json "$work/cnnc_256.json" peak_bytes_unshared)"
machine_peak="$(json "$work/cnnc_256.json" peak_gflops)"
machine_lanes="$(json "$work/cnnc_256.json" peak_lanes)"
f32x4_peak="$(json "$work/cnnc_256.json" f32x4_peak_gflops)"
if $full; then
    start="$(now)"
    # The same data as the peers (the model's own train section says mnist).
    if record "$cnnc" run "$model" --data "$fashion" --threads "$threads" \
        --log "$work/cnnc_run.jsonl" > /dev/null; then
        C[wall]="$(since "$start")"
        C[acc]="$(last_log_value "$work/cnnc_run.jsonl" test_acc)"
    fi
    # A run that wrote no epoch log did not train: its time means nothing.
    [[ "${C[acc]}" == "-" ]] && C[wall]="-"
fi

# ---- peers -----------------------------------------------------------------------------
# peer NAME SCRIPT — fills the associative array named NAME from the peer's JSON files.
peer() {
    local -n R="$1"
    local script="$2" tag="$1"
    for b in 256 64; do
        record "$PEERS_PYTHON" "$peers/$script" --mode train --batch "$b" --epochs "$epochs" \
            --threads "$threads" --data "$fashion" --json "$work/${tag}_$b.json" > /dev/null
        R[train$b]="$(json "$work/${tag}_$b.json" train.img_per_s_median_excl_first)"
    done
    R[compile]="$(json "$work/${tag}_256.json" compile_train_s)"
    record "$PEERS_PYTHON" "$peers/$script" --mode infer --threads "$threads" \
        --data "$fashion" --json "$work/${tag}_infer.json" > /dev/null
    R[infer1]="$(json "$work/${tag}_infer.json" infer.batch1.median_ms)"
    R[infer256]="$(json "$work/${tag}_infer.json" infer.batch256.median_ms)"
    if $full; then
        local start
        start="$(now)"
        record "$PEERS_PYTHON" "$peers/$script" --mode train --epochs 10 --batch 256 \
            --threads "$threads" --data "$fashion" --json "$work/${tag}_full.json" > /dev/null
        R[wall]="$(since "$start")"
        R[acc]="$(json "$work/${tag}_full.json" train.final_test_acc)"
    fi
}
declare -A T J
blank T
blank J
if $have_torch; then
    if [[ ! -d "$fashion" ]]; then
        notes+=("No Fashion-MNIST at $fashion (set FASHION_MNIST): the peers' rows are skipped.")
    else
        peer T lenet_torch.py
        if $have_jax; then peer J lenet_jax.py; fi
    fi
fi

# ---- table -----------------------------------------------------------------------------
fmt() { [[ "$1" == "-" ]] && echo "-" || "$py" -c "print(f'{$1:,.${2}f}')"; }
row() { printf '| %-9s | %15s | %14s | %12s | %14s | %10s |\n' "$@"; }
full_row() { printf '| %-9s | %22s | %24s |\n' "$@"; }
# line NAME ARRAY — one framework's row.
line() {
    local -n R="$2"
    row "$1" "$(fmt "${R[train256]}" 0)" "$(fmt "${R[train64]}" 0)" "$(fmt "${R[infer1]}" 3)" \
        "$(fmt "${R[infer256]}" 3)" "$(fmt "${R[compile]}" 3)"
}

echo
echo "LeNet (models/lenet.cnn, d2l recipe), $threads threads, $(date -u '+%Y-%m-%d %H:%M UTC')"
echo "Machine: $cpu, nproc $(nproc), load average (1, 5, 15 min) before the run: $load_before"
echo
row "framework" "train img/s b256" "train img/s b64" "infer ms b1" "infer ms b256" "compile s"
row "---" "---" "---" "---" "---" "---"
line cnnc C
$have_torch && line PyTorch T
$have_jax && line JAX J
if $full; then
    echo
    full_row "framework" "10 epochs, wall (s)" "final test accuracy"
    full_row "---" "---" "---"
    full_row cnnc "$(fmt "${C[wall]}" 1)" "$(fmt "${C[acc]}" 4)"
    $have_torch && full_row PyTorch "$(fmt "${T[wall]}" 1)" "$(fmt "${T[acc]}" 4)"
    $have_jax && full_row JAX "$(fmt "${J[wall]}" 1)" "$(fmt "${J[acc]}" 4)"
fi
echo
if [[ "$peak" != "-" ]]; then
    echo "cnnc peak memory at batch 256: $(fmt "$(div "$peak" 1048576)" 1) MiB" \
        "(planned; $(fmt "$(div "$peak_unshared" 1048576)" 1) MiB without sharing)"
fi
if [[ "$f32x4_peak" != "-" ]]; then
    echo "Machine peak on $threads threads, as cnnc bench measured it: $(fmt "$machine_peak" 0)" \
        "GFLOP/s with $machine_lanes-lane FMAs, $(fmt "$f32x4_peak" 0) with the 4-lane ones of" \
        "cnnc's generated code (cnnc's batch-256 training step: $(fmt "$(json "$work/cnnc_256.json" gflops.train)" 0))"
fi
echo "cnnc: 'cnnc bench' (steady-state step on one fixed batch); peers: median epoch of real data."
echo "Load average after the run: $(uptime | sed 's/.*load average: //')"
echo "Figures taken while other programs ran are lower than the machine's: check the load."
for note in "${notes[@]}"; do echo "$note"; done
echo
echo "Commands:"
for command in "${commands[@]}"; do echo "  ${command//$repo\//}"; done
