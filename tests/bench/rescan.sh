#!/usr/bin/env bash
# rescan.sh: Keepsake's unchanged rescan of a large small-files tree (e.g. 1,000,000 files made
# by `gen-shoot smallfiles --count 1000000`), without the peers. See tests/bench/README.md.
#
#   rescan.sh [--reps N] TREE SCRATCH
#
# Starts `keepsake-server` (embedded PostgreSQL) with its data dir in SCRATCH/srv on a loopback
# port, enrols an agent (home SCRATCH/home), then measures, all with a warm page cache:
#   find + stat of every file (the kernel's floor), REPS times;
#   the initial `keepsake backup TREE` (once);
#   the unchanged re-run of `keepsake backup TREE`, REPS times;
#   `keepsake scan TREE` (read-only comparison with the catalog), REPS times.
# Output: SCRATCH/rescan.jsonl (one line per measurement) and a table on stdout. As root the
# embedded cluster runs as `postgres`, so SCRATCH must be traversable by it (not under /root).

set -uo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
KS_BIN="${KS_BIN:-$root/target/release}"
REPS=3
ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --reps) REPS="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) ARGS+=("$1"); shift ;;
    esac
done
[[ ${#ARGS[@]} -eq 2 ]] || { echo "usage: $0 [--reps N] TREE SCRATCH" >&2; exit 2; }
TREE="$(cd "${ARGS[0]}" && pwd)"
mkdir -p "${ARGS[1]}"
SCRATCH="$(cd "${ARGS[1]}" && pwd)"
OUT="$SCRATCH/rescan.jsonl"
LOGS="$SCRATCH/logs"
mkdir -p "$LOGS"
: >"$OUT"
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }

FILES=$(find "$TREE" -type f | wc -l)
BYTES=$(du -sb "$TREE" | cut -f1)
log "tree: $FILES files, $BYTES bytes"
echo "{\"kind\":\"machine\",\"date\":\"$(date -Is)\",\"cpu\":\"$(lscpu | awk -F': *' '/^Model name/ { print $2; exit }')\",\"cores\":$(nproc),\"kernel\":\"$(uname -r)\",\"uptime\":\"$(uptime)\",\"files\":$FILES,\"bytes\":$BYTES}" >>"$OUT"

SRV="$SCRATCH/srv"
HOME_DIR="$SCRATCH/home"
rm -rf "$SRV" "$HOME_DIR"
mkdir -p "$SRV"
PASS="$SCRATCH/passphrase"
echo "keepsake-bench-throwaway-passphrase" >"$PASS"
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL="http://127.0.0.1:$PORT"
"$KS_BIN/keepsake-server" serve --bind "127.0.0.1:$PORT" --data-dir "$SRV" >"$LOGS/server.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null' EXIT
ready=0
for _ in $(seq 240); do
    python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$URL/readyz" 2>/dev/null && { ready=1; break; }
    kill -0 "$PID" 2>/dev/null || break
    sleep 0.5
done
[[ $ready -eq 1 ]] || { log "server did not start (see $LOGS/server.log)"; exit 1; }
org=$("$KS_BIN/keepsake-server" admin create-org "Bench rescan" --json --data-dir "$SRV" 2>>"$LOGS/admin.log") || exit 1
token=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["enroll_token"])' "$org")
"$KS_BIN/keepsake" --home "$HOME_DIR" enroll --server "$URL" --token "$token" --name bench-rescan \
    --passphrase-file "$PASS" >"$LOGS/enroll.log" 2>&1 || { log "enroll failed"; exit 1; }

# timed OP REP CMD... : /usr/bin/time -v around CMD, one JSON line.
timed() {
    local op="$1" rep="$2"
    shift 2
    local tf="$LOGS/$op-$rep.time" l
    sync
    l=$(cut -d' ' -f1 /proc/loadavg)
    /usr/bin/time -v -o "$tf" "$@" >"$LOGS/$op-$rep.out" 2>"$LOGS/$op-$rep.err"
    local rc=$?
    python3 - "$tf" "$op" "$rep" "$rc" "$FILES" "$l" >>"$OUT" <<'PY'
import json, sys
t = {}
for line in open(sys.argv[1]):
    k, _, v = line.strip().partition(": ")
    t[k] = v
w = 0.0
for p in t["Elapsed (wall clock) time (h:mm:ss or m:ss)"].split(":"):
    w = w * 60 + float(p)
u, s = float(t["User time (seconds)"]), float(t["System time (seconds)"])
files = int(sys.argv[5])
print(json.dumps({"op": sys.argv[2], "rep": int(sys.argv[3]), "ok": sys.argv[4] == "0", "wall_s": w,
                  "cpu_s": round(u + s, 2), "us_cpu_per_file": round((u + s) / files * 1e6, 2),
                  "max_rss_mb": round(int(t["Maximum resident set size (kbytes)"]) / 1024, 1),
                  "files": files, "load1": float(sys.argv[6])}))
PY
    tail -1 "$OUT" >&2
}

find "$TREE" -type f -printf '%s %T@ %i\n' >/dev/null   # warm the dentry and inode caches
for r in $(seq "$REPS"); do timed find-stat "$r" sh -c "find '$TREE' -type f -printf '%s %T@ %i\n' > /dev/null"; done
log "initial backup"
timed initial 1 "$KS_BIN/keepsake" --home "$HOME_DIR" backup "$TREE" --json
for r in $(seq "$REPS"); do timed rescan "$r" "$KS_BIN/keepsake" --home "$HOME_DIR" backup "$TREE" --json; done
for r in $(seq "$REPS"); do timed scan "$r" "$KS_BIN/keepsake" --home "$HOME_DIR" scan "$TREE" --json; done
echo "{\"kind\":\"end\",\"date\":\"$(date -Is)\",\"uptime\":\"$(uptime)\"}" >>"$OUT"

python3 - "$OUT" <<'PY'
import json, statistics, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
m = rows[0]
print(f"{m['files']} files, {m['bytes'] / 1e6:.1f} MB; {m['cpu']}, {m['cores']} cores, kernel {m['kernel']}")
print(f"start {m['date']} `{m['uptime'].strip()}`; end {rows[-1]['date']} `{rows[-1]['uptime'].strip()}`")
print("| operation | n | wall s (median) | range | CPU s | µs CPU/file | peak RSS MB | load1 |")
print("|---|---|---|---|---|---|---|---|")
ops = []
for r in rows:
    if "op" in r and r["op"] not in ops:
        ops.append(r["op"])
for op in ops:
    g = [r for r in rows if r.get("op") == op]
    w = [r["wall_s"] for r in g]
    print(f"| {op}{'' if all(r['ok'] for r in g) else ' (FAILED)'} | {len(g)} | {statistics.median(w):.2f} | {min(w):.2f}-{max(w):.2f} | "
          f"{statistics.median(r['cpu_s'] for r in g):.2f} | {statistics.median(r['us_cpu_per_file'] for r in g):.1f} | "
          f"{statistics.median(r['max_rss_mb'] for r in g):.0f} | {min(r['load1'] for r in g):.2f}-{max(r['load1'] for r in g):.2f} |")
PY
