#!/bin/bash
# usage: benchmarks/log_shapes.sh SHAPE [WORK]   (SHAPE: events | mind | movielens)
#
# The whole job of docs/ingest.md ("End to end") on a fresh home under WORK (default
# /tmp/log-shapes): ingest, train text, score, train ranker, evaluate with default settings,
# then `recsys serve` and two requests (a known user, an unknown one).  Prints each step's exit
# status and wall time; everything the commands print goes to WORK/SHAPE.log, with the load
# average at each step's start.  Results of 2026-12-03: benchmarks/results/log_shapes.md.
set -u
SHAPE=${1:?usage: benchmarks/log_shapes.sh events|mind|movielens [WORK]}
WORK=${2:-/tmp/log-shapes}
cd "$(dirname "$0")/.." || exit 2
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RECSYS_DATA_DIR=${RECSYS_DATA_DIR:-$PWD/../shared/data}
export RECSYS_HOME=$WORK/$SHAPE-home
DATA=$WORK/$SHAPE-data
LOG=$WORK/$SHAPE.log
R=(.venv/bin/python -m recsys)
rm -rf "$RECSYS_HOME" "$DATA"
mkdir -p "$RECSYS_HOME"
: >"$LOG"

step() {
    local name=$1 t0 rc
    shift
    t0=$(date +%s.%N)
    echo "### $name: $* (load $(cut -d' ' -f1-3 /proc/loadavg))" >>"$LOG"
    "$@" >>"$LOG" 2>&1
    rc=$?
    printf '%s %s rc=%d wall=%.1fs\n' "$SHAPE" "$name" "$rc" "$(echo "$(date +%s.%N) - $t0" | bc)" |
        tee -a "$LOG"
}

case $SHAPE in
events)
    step example "${R[@]}" ingest example events "$DATA"
    step ingest_items "${R[@]}" ingest items "$DATA/items.csv"
    step ingest_events "${R[@]}" ingest events "$DATA/events.csv"
    ;;
mind)
    export RECSYS_SPLIT__KIND=global_time
    step example "${R[@]}" ingest example mind "$DATA"
    step ingest "${R[@]}" ingest mind "$DATA"
    ;;
movielens) step ingest "${R[@]}" ingest movielens --data-dir "$RECSYS_DATA_DIR" ;;
*)
    echo "unknown shape $SHAPE: events, mind or movielens" >&2
    exit 2
    ;;
esac
step train_text "${R[@]}" train text
step score "${R[@]}" score
step train_ranker "${R[@]}" train ranker
step evaluate "${R[@]}" evaluate

PORT=$((8100 + RANDOM % 100))
"${R[@]}" serve --port "$PORT" >>"$WORK/$SHAPE.serve.log" 2>&1 &
SERVER=$!
for waited in $(seq 1 120); do
    curl -sf "localhost:$PORT/readyz" >/dev/null && break
    sleep 1
done
USER_ID=$(.venv/bin/python -c "import duckdb, sys; print(duckdb.connect(sys.argv[1], read_only=True).execute('SELECT user_id FROM events LIMIT 1').fetchone()[0])" "$RECSYS_HOME/recsys.duckdb")
echo "### serve ready after ${waited}s; user $USER_ID" >>"$LOG"
for who in "$USER_ID" nobody-new; do
    curl -s -w '\nHTTP %{http_code} %{time_total}s\n' \
        "localhost:$PORT/v1/users/$who/recommendations?k=5&explain=true" >>"$LOG"
    echo "$SHAPE serve $who: $(tail -1 "$LOG")"
done
kill -TERM "$SERVER"
wait "$SERVER"
echo "$SHAPE serve stopped rc=$?"
