#!/usr/bin/env bash
# Issue 12's CPU budget: `recsys train text` + `recsys score` with default flags on a fresh home
# (MovieLens-small from RECSYS_DATA_DIR), wall / CPU / peak RSS of each step, load average before
# each; then `recsys train ranker` and `recsys evaluate` (the rest of the demo's job) with
# the report's headline figures.  Run it on a quiet machine: `bash benchmarks/text_budget.sh [home]`.
# Writes benchmarks/results/text_budget.md.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
export RECSYS_DATA_DIR="${RECSYS_DATA_DIR:-$(cd .. && pwd)/shared/data}"
HOME_DIR="${1:-/tmp/recsys-text-budget}"
OUT=benchmarks/results/text_budget.md
R=.venv/bin/recsys
rm -rf "$HOME_DIR"
step() {  # name, args...
    local name=$1; shift
    local load; load=$(cut -d' ' -f1-3 /proc/loadavg)
    /usr/bin/time -f "%e %U %S %M" -o /tmp/text-budget-time "$R" --home "$HOME_DIR" "$@" \
        > "/tmp/text-budget-$name.log" 2>&1
    read -r wall user sys rss < /tmp/text-budget-time
    printf '| %s | %.1f | %.1f | %.2f | %s |\n' "$name" "$wall" "$(echo "$user + $sys" | bc)" \
        "$(echo "scale=2; $rss / 1048576" | bc)" "$load"
}
{
    echo "# Text model CPU budget (issue 12): defaults, fresh home, MovieLens-small"
    echo
    echo "Machine: $(uname -m), $(nproc) CPUs; $(date -u +%Y-%m-%dT%H:%MZ); commit $(git rev-parse --short HEAD)"
    echo
    echo "| step | wall s | CPU s | peak RSS GB | load average before (1/5/15 min) |"
    echo "| --- | ---: | ---: | ---: | --- |"
    step ingest ingest movielens
    step train_text train text
    step score score
    step train_ranker train ranker
    step evaluate evaluate --output "$HOME_DIR/report"
} | tee "$OUT"
grep -h "plan:\|estimate:\|promoted\|not promoted" /tmp/text-budget-train_text.log | sort -u | sed 's/^/    /' >> "$OUT"
{
    echo
    echo "Report (protocol v1, seed from settings):"
    echo
    grep -E "^\| (popularity|item_knn|als|tfidf|text_only|ranker_no_text|ranker) " "$HOME_DIR/report/report.md" || true
    grep -iE "warning|candidate recall" "$HOME_DIR/report/report.md" | head -5 || true
} | tee -a "$OUT"
