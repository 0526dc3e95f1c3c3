#!/usr/bin/env bash
# bench/compare.sh — cnnc, PyTorch and (if installed) JAX side by side on d2l's LeNet
# (models/lenet.cnn: sigmoid, average pooling, SGD lr 0.9, Fashion-MNIST), in one run, one
# program at a time, printed as one table (issue 7, point 6).
#
# Where each number comes from:
#   cnnc     `cnnc bench models/lenet.cnn --batch B --threads N --format json`
#              train img/s  = train_images_per_second (forward + backward + SGD step)
#              forward ms   = 1000 · B / infer_images_per_second
#            with --full: `cnnc run models/lenet.cnn --threads N --log FILE`, timed by this
#            script, final test accuracy = `test_acc` of the log's last line.
#   PyTorch  ../shared/peers/lenet_torch.py --json FILE (see ../shared/peers/README.md)
#              train img/s  = train.img_per_s_median_excl_first (median epoch, epoch 1 excluded)
#              forward ms   = infer.batch1.median_ms, infer.batch256.median_ms
#            with --full: the 10-epoch run timed by this script; train.final_test_acc.
#   JAX      ../shared/peers/lenet_jax.py, the same keys (compile time excluded from epochs).
#
# Usage: bench/compare.sh [--threads N] [--epochs E] [--full] [--no-build]
#   --threads N   threads for every framework (default 2, the whole machine)
#   --epochs E    epochs of the peers' throughput runs (default 3; epoch 1 is excluded)
#   --full        also the end-to-end 10-epoch run of each framework (wall time, accuracy)
#   --no-build    use target/release/cnnc as it is
# Environment: PYTHON (default ../peers-venv/bin/python or /work/peers-venv/bin/python, with
# torch), PEERS_DIR (default ../shared/peers from the repository, or
# /work/shared/peers), FASHION_MNIST (IDX folder,
# default /usr/share/datasets/fashion-mnist), CNNC_DATA (cnnc's data folder; by default a
# temporary one linking FASHION_MNIST).
#
# Run it on an idle machine (`uptime` is printed first) and compare figures only within one
# run: the host is shared and its speed drifts.
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
if [[ -z "${PYTHON:-}" ]]; then
    for candidate in "$repo/../peers-venv/bin/python" /work/peers-venv/bin/python; do
        if [[ -x "$candidate" ]]; then PYTHON="$candidate"; break; fi
    done
fi
PYTHON="${PYTHON:-python3}"
cnnc="$repo/target/release/cnnc"
model="$repo/models/lenet.cnn"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

[[ -f "$peers/lenet_torch.py" ]] || { echo "no $peers/lenet_torch.py: set PEERS_DIR" >&2; exit 1; }
"$PYTHON" -c 'import torch' 2>/dev/null \
    || { echo "$PYTHON cannot import torch: set PYTHON (see ../shared/peers/README.md)" >&2; exit 1; }
have_jax=false
"$PYTHON" -c 'import jax' 2>/dev/null && have_jax=true
if [[ -z "${CNNC_DATA:-}" ]]; then
    mkdir -p "$work/data"
    ln -s "$fashion" "$work/data/fashion-mnist"
    export CNNC_DATA="$work/data"
fi

# json FILE KEY.PATH — one number from a JSON file ("-" when the key is missing).
json() {
    "$PYTHON" - "$1" "$2" <<'EOF'
import json, sys
try:
    value = json.load(open(sys.argv[1]))
    for key in sys.argv[2].split("."):
        value = value[key]
    print(value)
except (OSError, ValueError, KeyError, TypeError):
    print("-")
EOF
}

# last_log_value FILE KEY — KEY of the last JSON line of a --log file.
last_log_value() {
    "$PYTHON" - "$1" "$2" <<'EOF'
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
    "$PYTHON" -c "print($1 / $2)"
}

now() { date +%s.%N; }
# since START — seconds elapsed since START (a `now`).
since() { "$PYTHON" -c "print($(now) - $1)"; }

echo "== $(date -u '+%Y-%m-%d %H:%M UTC')  $(uname -n)  $(nproc) cores  threads=$threads"
echo "== uptime:$(uptime | sed 's/.*load average/ load average/')"

if $build; then
    echo "== cargo build --release"
    (cd "$repo" && cargo build --release --quiet)
fi

# ---- cnnc ------------------------------------------------------------------------------
declare -A C
for b in 1 64 256; do C[train$b]="-"; C[infer$b]="-"; done
C[compile]="-"; C[wall]="-"; C[acc]="-"
cnnc_notes=()
for b in 256 64 1; do
    echo "== cnnc bench models/lenet.cnn --batch $b --threads $threads"
    if "$cnnc" bench "$model" --batch "$b" --threads "$threads" --format json \
        > "$work/cnnc_$b.json"; then
        C[train$b]="$(json "$work/cnnc_$b.json" train_images_per_second)"
        C[infer$b]="$(json "$work/cnnc_$b.json" infer_images_per_second)"
    fi
done
C[compile]="$(json "$work/cnnc_256.json" compile_seconds)"
if [[ "${C[train256]}" == "-" ]]; then
    cnnc_notes+=("\`cnnc bench ... --format json\` gave no train_images_per_second: is it implemented?")
fi
if $full; then
    echo "== cnnc run models/lenet.cnn --threads $threads (10 epochs)"
    start="$(now)"
    if "$cnnc" run "$model" --threads "$threads" --log "$work/cnnc_run.jsonl"; then
        C[wall]="$(since "$start")"
        C[acc]="$(last_log_value "$work/cnnc_run.jsonl" test_acc)"
    fi
    if [[ "${C[acc]}" == "-" ]]; then
        C[wall]="-"  # a run that wrote no epoch log did not train: its time means nothing
        cnnc_notes+=("\`cnnc run --log\` wrote no test_acc: is it implemented?")
    fi
fi

# ---- peers -----------------------------------------------------------------------------
# peer NAME SCRIPT — fills the associative array named NAME from the peer's JSON.
peer() {
    local -n R="$1"
    local script="$2" tag="$1"
    for b in 1 64 256; do R[train$b]="-"; R[infer$b]="-"; done
    R[compile]="-"; R[wall]="-"; R[acc]="-"
    for b in 256 64; do
        echo "== $script --mode train --batch $b --epochs $epochs --threads $threads"
        "$PYTHON" "$peers/$script" --mode train --batch "$b" --epochs "$epochs" \
            --threads "$threads" --data "$fashion" --json "$work/${tag}_$b.json" > /dev/null
        R[train$b]="$(json "$work/${tag}_$b.json" train.img_per_s_median_excl_first)"
    done
    R[compile]="$(json "$work/${tag}_256.json" compile_train_s)"
    echo "== $script --mode infer --threads $threads"
    "$PYTHON" "$peers/$script" --mode infer --threads "$threads" --data "$fashion" \
        --json "$work/${tag}_infer.json" > /dev/null
    local ms1 ms256
    ms1="$(json "$work/${tag}_infer.json" infer.batch1.median_ms)"
    ms256="$(json "$work/${tag}_infer.json" infer.batch256.median_ms)"
    R[infer1]="$(div 1000 "$ms1")"
    R[infer256]="$(div 256000 "$ms256")"
    if $full; then
        echo "== $script --mode train --epochs 10 --batch 256 --threads $threads (timed)"
        local start
        start="$(now)"
        "$PYTHON" "$peers/$script" --mode train --epochs 10 --batch 256 --threads "$threads" \
            --data "$fashion" --json "$work/${tag}_full.json" > /dev/null
        R[wall]="$(since "$start")"
        R[acc]="$(json "$work/${tag}_full.json" train.final_test_acc)"
    fi
}
declare -A T J
peer T lenet_torch.py
if $have_jax; then peer J lenet_jax.py; fi

# ---- table -----------------------------------------------------------------------------
fmt() { [[ "$1" == "-" ]] && echo "-" || "$PYTHON" -c "print(f'{$1:,.${2}f}')"; }
# ms B IMG_PER_S — milliseconds per batch of B images.
ms() { div "$((1000 * $1))" "$2"; }
ratio() { local r; r="$(div "$1" "$2")"; [[ "$r" == "-" ]] && echo "-" || "$PYTHON" -c "print(f'{$r:.2f}x')"; }
row() { printf '| %-38s | %12s | %12s | %12s | %14s |\n' "$@"; }

echo
echo "LeNet (models/lenet.cnn), $threads threads, $(date -u '+%Y-%m-%d')"
row "workload" "cnnc" "PyTorch" "JAX" "cnnc vs torch"
row "---" "---" "---" "---" "---"
for b in 256 64; do
    row "train step, batch $b (img/s)" "$(fmt "${C[train$b]}" 0)" "$(fmt "${T[train$b]}" 0)" \
        "$(fmt "${J[train$b]:--}" 0)" "$(ratio "${C[train$b]}" "${T[train$b]}")"
done
for b in 1 256; do
    c="$(ms "$b" "${C[infer$b]}")"; t="$(ms "$b" "${T[infer$b]}")"; j="$(ms "$b" "${J[infer$b]:--}")"
    row "forward, batch $b (ms)" "$(fmt "$c" 3)" "$(fmt "$t" 3)" "$(fmt "$j" 3)" \
        "$(ratio "$t" "$c")"
done
row "compile, train step (s)" "$(fmt "${C[compile]}" 3)" "-" "$(fmt "${J[compile]:--}" 3)" "-"
if $full; then
    row "10 epochs Fashion-MNIST, wall (s)" "$(fmt "${C[wall]}" 1)" "$(fmt "${T[wall]}" 1)" \
        "$(fmt "${J[wall]:--}" 1)" "$(ratio "${T[wall]}" "${C[wall]}")"
    row "10 epochs, final test accuracy" "$(fmt "${C[acc]}" 4)" "$(fmt "${T[acc]}" 4)" \
        "$(fmt "${J[acc]:--}" 4)" "-"
fi
echo
echo "Ratios are speed-ups of cnnc over PyTorch (> 1 means cnnc is faster)."
echo "cnnc: 'cnnc bench' (steady-state step on a fixed batch); peers: median epoch of real data."
for note in "${cnnc_notes[@]}"; do echo "$note"; done
$have_jax || echo "JAX is not installed in $PYTHON: the JAX column is empty."
