#!/usr/bin/env bash
# peers.sh: physical limits of this machine and the peer backup tools (restic, borg), measured
# in one run on a dataset made by `gen-shoot`. See tests/bench/README.md.
#
#   peers.sh [options] DATASET SCRATCH
#
#   DATASET    a tree made by `gen-shoot generate` (copied into SCRATCH first: the run mutates
#              its copy, so DATASET itself is left as it was; --in-place to skip the copy)
#   SCRATCH    work directory (repositories, restores, logs); needs ~6x the dataset's size free
#
# Options:
#   --smallfiles DIR   a tree made by `gen-shoot smallfiles` (the metadata-scan probe); without
#                      it the small-files measurements are skipped
#   --reps N           repetitions of the repeatable measurements (default 3; the table shows
#                      the median)
#   --gen-shoot BIN    the gen-shoot binary (default: target/release/gen-shoot of this checkout)
#   --bench-limits BIN the bench-limits binary (default: target/release/bench-limits)
#   --only LIST        comma-separated subset of: limits,restic,restic-rest,borg,keepsake
#   --cold             drop the page cache before every backup and restore (default: warm cache)
#   --in-place         mutate DATASET itself instead of a copy
#   --out FILE         JSON-lines results (default: SCRATCH/results.jsonl); the table is printed
#                      at the end and written next to it as results.md
#
# Every measurement is one JSON line: tool, backend, op, rep, wall_s, user_s, sys_s, cpu_s,
# max_rss_mb, bytes, mb_s, cpu_s_per_gb, and where they apply repo growth, the tool's own
# "bytes added", files/s, and the server process's CPU and peak RSS.

set -uo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"

REPS=3
SMALL=""
GEN_SHOOT="$root/target/release/gen-shoot"
BENCH_LIMITS="$root/target/release/bench-limits"
ONLY="limits,restic,restic-rest,borg,keepsake"
COLD=0
IN_PLACE=0
OUT=""
ARGS=()
while [[ $# -gt 0 ]]; do
    case "$1" in
    --smallfiles) SMALL="$2"; shift 2 ;;
    --reps) REPS="$2"; shift 2 ;;
    --gen-shoot) GEN_SHOOT="$2"; shift 2 ;;
    --bench-limits) BENCH_LIMITS="$2"; shift 2 ;;
    --only) ONLY="$2"; shift 2 ;;
    --cold) COLD=1; shift ;;
    --in-place) IN_PLACE=1; shift ;;
    --out) OUT="$2"; shift 2 ;;
    -h | --help) sed -n '2,/^$/s/^# \{0,1\}//p' "$0"; exit 0 ;;
    -*) echo "unknown option $1" >&2; exit 2 ;;
    *) ARGS+=("$1"); shift ;;
    esac
done
if [[ ${#ARGS[@]} -ne 2 ]]; then
    echo "usage: $0 [options] DATASET SCRATCH   (--help)" >&2
    exit 2
fi
SRC="$(cd "${ARGS[0]}" && pwd)"
mkdir -p "${ARGS[1]}"
SCRATCH="$(cd "${ARGS[1]}" && pwd)"
OUT="${OUT:-$SCRATCH/results.jsonl}"
LOGS="$SCRATCH/logs"
mkdir -p "$LOGS"
[[ -f "$SRC/.gen_manifest.json" ]] || { echo "$SRC: no .gen_manifest.json (not a gen-shoot tree)" >&2; exit 2; }
[[ -x "$GEN_SHOOT" ]] || { echo "gen-shoot not found at $GEN_SHOOT (cargo build --release -p keepsake-e2e --bin gen-shoot)" >&2; exit 2; }
if [[ -n "$SMALL" ]]; then SMALL="$(cd "$SMALL" && pwd)"; fi

# Throwaway secrets for throwaway repositories (restic refuses an empty password).
export RESTIC_PASSWORD="keepsake-bench"
export BORG_PASSPHRASE="keepsake-bench"
export BORG_RELOCATED_REPO_ACCESS_IS_OK=yes
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes
export BORG_BASE_DIR="$SCRATCH/borg-base"   # borg's caches, keys and security dir
export RESTIC_CACHE_DIR="$SCRATCH/restic-cache"
export RCLONE_CONFIG="$SCRATCH/rclone.conf"
: >"$RCLONE_CONFIG"

# Compression settings equivalent to Keepsake's (zstd level 3 on what compresses, nothing on
# what does not): restic's default "auto" (zstd, skipped for incompressible data); borg
# "auto,zstd,3" (an lz4 trial decides, then zstd level 3).
RESTIC_COMPRESSION="auto"
BORG_COMPRESSION="auto,zstd,3"
BORG_ENCRYPTION="repokey-blake2"  # AES-256-CTR + BLAKE2b MAC/ids: closest to Keepsake's BLAKE3 ids

want() { [[ ",$ONLY," == *",$1,"* ]]; }
log() { echo "[$(date +%H:%M:%S)] $*" >&2; }
have() { command -v "$1" >/dev/null 2>&1; }
load1() { cut -d' ' -f1 /proc/loadavg; }
bytes_of() { local b; b=$(du -sb "$1" 2>/dev/null | cut -f1); echo "${b:-0}"; }
files_of() { find "$1" -type f | wc -l; }

drop_caches() {
    sync
    if [[ -w /proc/sys/vm/drop_caches ]] && echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
        return 0
    fi
    return 1
}
maybe_cold() { if [[ $COLD -eq 1 ]]; then drop_caches || true; fi; }

# ---------------------------------------------------------------------------------------------
# Measurement: /usr/bin/time -v around a command, one JSON line out.

# emit KEY=VALUE... : one JSON object; numbers stay numbers, the rest becomes strings.
emit() {
    local line="{" sep="" kv k v
    for kv in "$@"; do
        k="${kv%%=*}"
        v="${kv#*=}"
        if [[ "$v" =~ ^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$ || "$v" == true || "$v" == false || "$v" == null ]]; then
            line+="$sep\"$k\":$v"
        else
            v="${v//\\/\\\\}"
            v="${v//\"/\\\"}"
            line+="$sep\"$k\":\"$v\""
        fi
        sep=","
    done
    line+="}"
    echo "$line" >>"$OUT"
    echo "$line"
}

# The peak RSS and CPU time of a long-running server process (REST server, keepsake-server).
# SERVER_PG_PIDFILE (keepsake-server only): the embedded cluster's postmaster.pid; the CPU time of
# the postmaster and of all its children is then added to the server's (the postmaster is not a
# child of keepsake-server: pg_ctl detaches it). Backends that exit during an operation are
# counted through the postmaster's cutime/cstime (the kernel adds a reaped child's time there).
SERVER_PID=""
SERVER_PG_PIDFILE=""
HZ=$(getconf CLK_TCK)
pg_postmaster() { [[ -n "$SERVER_PG_PIDFILE" && -r "$SERVER_PG_PIDFILE" ]] && head -1 "$SERVER_PG_PIDFILE"; }
pg_pids() { # the postmaster and its children
    local pm
    pm=$(pg_postmaster) || return 0
    [[ -n "$pm" && -r /proc/$pm/stat ]] || return 0
    echo "$pm"
    # cat, not awk over the files: mawk stops at a process that exited since the glob.
    cat /proc/[0-9]*/stat 2>/dev/null | awk -v pm="$pm" '{ pid = $1; sub(/.*\) /, ""); if ($2 == pm) print pid }'
}
server_reset_peak() {
    local p
    [[ -n "$SERVER_PID" ]] || return 0
    for p in "$SERVER_PID" $(pg_pids); do echo 5 >"/proc/$p/clear_refs" 2>/dev/null; done
    return 0
}
proc_ticks() { # PID [with-children] : utime+stime (+cutime+cstime) in clock ticks
    awk -v c="${2:-0}" '{ sub(/.*\) /, ""); print $12 + $13 + (c ? $14 + $15 : 0) }' "/proc/$1/stat" 2>/dev/null || echo 0
}
pg_cpu() { # CPU seconds of the cluster so far (0 without one)
    local pm t=0 p
    pm=$(pg_postmaster) || { echo 0; return; }
    [[ -n "$pm" && -r /proc/$pm/stat ]] || { echo 0; return; }
    t=$(proc_ticks "$pm" 1)
    for p in $(pg_pids); do [[ "$p" == "$pm" ]] || t=$((t + $(proc_ticks "$p"))); done
    awk -v t="$t" -v hz="$HZ" 'BEGIN { printf "%.2f", t / hz }'
}
server_cpu() { # the server process (and children it reaped) plus its PostgreSQL cluster
    [[ -n "$SERVER_PID" && -r /proc/$SERVER_PID/stat ]] || { echo 0; return; }
    awk -v t="$(proc_ticks "$SERVER_PID" 1)" -v hz="$HZ" -v pg="$(pg_cpu)" 'BEGIN { printf "%.2f", t / hz + pg }'
}
server_hwm_mb() {
    [[ -n "$SERVER_PID" && -r /proc/$SERVER_PID/status ]] || { echo 0; return; }
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024 }' "/proc/$SERVER_PID/status"
}
pg_hwm_mb() { # the largest peak RSS among the cluster's processes (shared buffers they touched included)
    local p m=0 v
    for p in $(pg_pids); do
        v=$(awk '/^VmHWM:/ { print $2 }' "/proc/$p/status" 2>/dev/null)
        [[ -n "$v" && "$v" -gt "$m" ]] && m=$v
    done
    awk -v m="$m" 'BEGIN { printf "%.1f", m / 1024 }'
}

# run_timed NAME -- CMD... : runs CMD under /usr/bin/time -v, output to logs/NAME.{out,err};
# sets T_WALL T_USER T_SYS T_RSS_MB T_RC.
run_timed() {
    local name="$1"
    shift
    [[ "$1" == "--" ]] && shift
    local tf="$LOGS/$name.time"
    /usr/bin/time -v -o "$tf" "$@" >"$LOGS/$name.out" 2>"$LOGS/$name.err"
    T_RC=$?
    T_USER=$(awk -F': ' '/User time/ { print $2 }' "$tf")
    T_SYS=$(awk -F': ' '/System time/ { print $2 }' "$tf")
    T_RSS_MB=$(awk -F': ' '/Maximum resident/ { printf "%.1f", $2 / 1024 }' "$tf")
    T_WALL=$(awk -F': ' '/Elapsed/ { n = split($2, p, ":"); s = 0; for (i = 1; i <= n; i++) s = s * 60 + p[i]; printf "%.2f", s }' "$tf")
    if [[ $T_RC -ne 0 ]]; then
        log "FAILED ($T_RC): $name: $*  (see $LOGS/$name.err)"
        tail -3 "$LOGS/$name.err" >&2
    fi
}

# measure TOOL BACKEND OP REP BYTES [REPO] [extra KEY=VALUE...] -- CMD...
# Repository growth is taken from REPO (a directory) before/after.
measure() {
    local tool="$1" backend="$2" op="$3" rep="$4" bytes="$5" repo="${6:-}"
    shift 6
    local extra=()
    while [[ $# -gt 0 && "$1" != "--" ]]; do extra+=("$1"); shift; done
    shift
    local before=0 after=0 scpu0 scpu1 pcpu0 pcpu1 l
    [[ -n "$repo" ]] && before=$(bytes_of "$repo")
    sync   # write back what earlier steps left dirty, outside the timed command
    server_reset_peak
    scpu0=$(server_cpu)
    pcpu0=$(pg_cpu)
    l=$(load1)
    run_timed "$tool-$backend-$op-$rep" -- "$@"
    scpu1=$(server_cpu)
    pcpu1=$(pg_cpu)
    [[ -n "$repo" ]] && after=$(bytes_of "$repo")
    local cpu mbs cpg
    cpu=$(awk -v u="$T_USER" -v s="$T_SYS" 'BEGIN { printf "%.2f", u + s }')
    mbs=$(awk -v b="$bytes" -v w="$T_WALL" 'BEGIN { if (w > 0) printf "%.1f", b / 1e6 / w; else print 0 }')
    cpg=$(awk -v b="$bytes" -v c="$cpu" 'BEGIN { if (b > 0) printf "%.2f", c / (b / 1e9); else print 0 }')
    local fields=(tool="$tool" backend="$backend" op="$op" rep="$rep" ok="$([[ $T_RC -eq 0 ]] && echo true || echo false)"
        wall_s="$T_WALL" user_s="$T_USER" sys_s="$T_SYS" cpu_s="$cpu" max_rss_mb="$T_RSS_MB"
        bytes="$bytes" mb_s="$mbs" cpu_s_per_gb="$cpg" load1="$l" cache="$([[ $COLD -eq 1 ]] && echo cold || echo warm)")
    if [[ -n "$repo" ]]; then fields+=(repo_bytes="$after" repo_growth_bytes="$((after - before))"); fi
    if [[ -n "$SERVER_PID" ]]; then
        fields+=(server_cpu_s="$(awk -v a="$scpu0" -v b="$scpu1" 'BEGIN { printf "%.2f", b - a }')" server_peak_rss_mb="$(server_hwm_mb)")
        if [[ -n "$SERVER_PG_PIDFILE" ]]; then
            fields+=(server_pg_cpu_s="$(awk -v a="$pcpu0" -v b="$pcpu1" 'BEGIN { printf "%.2f", b - a }')" server_pg_peak_rss_mb="$(pg_hwm_mb)")
        fi
    fi
    emit "${fields[@]}" "${extra[@]}"
}

# verify_restore DIR : compares the restored shoot (found by its manifest) with the dataset;
# prints true, false, or "unverified" when b3sum is not installed.
verify_restore() {
    local found
    command -v b3sum >/dev/null 2>&1 || { echo unverified; return; }
    found=$(find "$1" -name .gen_manifest.json -printf '%h\n' -quit)
    [[ -n "$found" ]] || { echo false; return; }
    if (cd "$found" && find . -type f -print0 | sort -z | xargs -0 b3sum) | cmp -s - "$SCRATCH/dataset.b3"; then
        echo true
    else
        echo false
    fi
}

# ---------------------------------------------------------------------------------------------
# Setup.

log "results -> $OUT"
: >"$OUT"
emit kind=machine date="$(date -Is)" cpu="$(lscpu | awk -F': *' '/^Model name/ { print $2; exit }')" \
    cores="$(nproc)" ram_gib="$(free -g | awk '/^Mem:/ { print $2 }')" kernel="$(uname -r)" \
    fs="$(findmnt -n -o FSTYPE -T "$SCRATCH")" disk="$(findmnt -n -o SOURCE -T "$SCRATCH")" \
    uptime="$(uptime)" restic="$(restic version 2>/dev/null | cut -d' ' -f2)" \
    borg="$(borg --version 2>/dev/null | cut -d' ' -f2)" rclone="$(rclone version 2>/dev/null | head -1 | cut -d' ' -f2)" \
    b3sum="$(b3sum --version 2>/dev/null | cut -d' ' -f2)" reps="$REPS" >/dev/null

if [[ $IN_PLACE -eq 1 ]]; then
    DATA="$SRC"
else
    DATA="$SCRATCH/shoot"
    log "copying the dataset to $DATA"
    rm -rf "$DATA"
    cp -a "$SRC" "$DATA"
fi
DATA_BYTES=$(bytes_of "$DATA")
DATA_FILES=$(files_of "$DATA")
(cd "$DATA" && find . -type f -print0 | sort -z | xargs -0 b3sum) >"$SCRATCH/dataset.b3"
log "dataset: $DATA_FILES files, $DATA_BYTES bytes"
SMALL_FILES=0
SMALL_BYTES=0
if [[ -n "$SMALL" ]]; then
    SMALL_FILES=$(files_of "$SMALL")
    SMALL_BYTES=$(bytes_of "$SMALL")
    log "small files: $SMALL_FILES files, $SMALL_BYTES bytes"
fi

# ---------------------------------------------------------------------------------------------
# Physical limits.

limits() {
    local r
    log "limits: sequential read, cold (page cache dropped)"
    for r in $(seq "$REPS"); do
        if drop_caches; then
            measure disk read-cold cat "$r" "$DATA_BYTES" "" -- sh -c "cd '$DATA' && find . -type f -print0 | xargs -0 cat > /dev/null"
        else
            emit tool=disk backend=read-cold op=cat ok=false note="cannot drop the page cache (not root?)"
            break
        fi
    done
    log "limits: sequential read, warm"
    (cd "$DATA" && find . -type f -print0 | xargs -0 cat >/dev/null)
    for r in $(seq "$REPS"); do
        measure disk read-warm cat "$r" "$DATA_BYTES" "" -- sh -c "cd '$DATA' && find . -type f -print0 | xargs -0 cat > /dev/null"
    done
    log "limits: copy (cp -a + sync: the ceiling for a restore)"
    for r in $(seq "$REPS"); do
        rm -rf "$SCRATCH/copy"
        measure disk copy cp-sync "$r" "$DATA_BYTES" "" -- sh -c "cp -a '$DATA' '$SCRATCH/copy' && sync"
    done
    rm -rf "$SCRATCH/copy"
    if have b3sum; then
        log "limits: BLAKE3 (b3sum), warm"
        for r in $(seq "$REPS"); do
            measure b3sum 1-thread hash "$r" "$DATA_BYTES" "" -- sh -c "cd '$DATA' && find . -type f -print0 | xargs -0 b3sum --num-threads 1 > /dev/null"
            measure b3sum all-threads hash "$r" "$DATA_BYTES" "" -- sh -c "cd '$DATA' && find . -type f -print0 | xargs -0 b3sum > /dev/null"
        done
    else
        emit tool=b3sum ok=false note="b3sum not installed (apt-get install b3sum)"
    fi
    if [[ -x "$BENCH_LIMITS" ]]; then
        log "limits: bench-limits (BLAKE3, zstd, age in memory)"
        "$BENCH_LIMITS" "$DATA" --reps "$REPS" 2>>"$LOGS/bench-limits.err" | tee -a "$OUT"
    else
        emit tool=bench-limits ok=false note="not built (cargo build --release -p keepsake-e2e --bin bench-limits)"
    fi
    if [[ -n "$SMALL" ]]; then
        log "limits: metadata scan of the small files (find + stat)"
        for r in $(seq "$REPS"); do
            if drop_caches; then
                measure scan cold find-stat "$r" "$SMALL_BYTES" "" files="$SMALL_FILES" -- sh -c "find '$SMALL' -type f -printf '%s %T@ %i\n' > /dev/null"
            fi
            measure scan warm find-stat "$r" "$SMALL_BYTES" "" files="$SMALL_FILES" -- sh -c "find '$SMALL' -type f -printf '%s %T@ %i\n' > /dev/null"
        done
    fi
}

# ---------------------------------------------------------------------------------------------
# restic (local repository, or through `rclone serve restic` on loopback).

RESTIC_PORT=""
restic_repo() { # BACKEND NAME : sets url (repository URL) and RESTIC_DIR (its directory)
    if [[ "$1" == local ]]; then
        RESTIC_DIR="$SCRATCH/restic-$2"
        url="$RESTIC_DIR"
    else
        RESTIC_DIR="$SCRATCH/rest-data/$2"
        url="rest:http://127.0.0.1:$RESTIC_PORT/$2/"
    fi
}

rest_start() {
    have rclone || return 1
    mkdir -p "$SCRATCH/rest-data"
    RESTIC_PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    rclone serve restic --addr "127.0.0.1:$RESTIC_PORT" "$SCRATCH/rest-data" >"$LOGS/rclone.log" 2>&1 &
    SERVER_PID=$!
    for _ in $(seq 50); do
        (exec 3<>"/dev/tcp/127.0.0.1/$RESTIC_PORT") 2>/dev/null && return 0
        sleep 0.2
    done
    log "rclone serve restic did not start (see $LOGS/rclone.log)"
    return 1
}
rest_stop() {
    if [[ -n "$SERVER_PID" ]]; then
        kill "$SERVER_PID" 2>/dev/null
        wait "$SERVER_PID" 2>/dev/null
        SERVER_PID=""
    fi
}

restic_summary() { # LOGNAME -> the tool's own "bytes added" from the --json summary
    grep '"message_type":"summary"' "$LOGS/$1.out" | tail -1 | sed -n 's/.*"data_added":\([0-9]*\).*/\1/p'
}

# restic_phase1 BACKEND : initial backups (fresh repository each rep) and unchanged re-runs.
restic_phase1() {
    local be="$1" r url
    export RESTIC_CACHE_DIR="$SCRATCH/restic-cache-$be"
    for r in $(seq "$REPS"); do
        # A new repository name per repetition: the REST server caches directory listings, so
        # a deleted and re-created repository would look like it still exists.
        if [[ $r -gt 1 ]]; then restic_repo "$be" "shoot-$((r - 1))"; rm -rf "$RESTIC_DIR"; fi
        restic_repo "$be" "shoot-$r"
        rm -rf "$RESTIC_DIR" "$RESTIC_CACHE_DIR"
        restic -r "$url" init --repository-version 2 >"$LOGS/restic-$be-init.log" 2>&1 || { log "restic init failed ($be)"; return 1; }
        maybe_cold
        log "restic/$be: initial backup $r/$REPS"
        measure restic "$be" initial "$r" "$DATA_BYTES" "$RESTIC_DIR" -- \
            sh -c "cd '$DATA' && exec restic -r '$url' backup --json --host bench --compression $RESTIC_COMPRESSION ."
        add_reported "$(restic_summary "restic-$be-initial-$r")"
    done
    for r in $(seq "$REPS"); do
        maybe_cold
        log "restic/$be: unchanged re-run $r/$REPS"
        measure restic "$be" rerun "$r" "$DATA_BYTES" "$RESTIC_DIR" -- \
            sh -c "cd '$DATA' && exec restic -r '$url' backup --json --host bench --compression $RESTIC_COMPRESSION ."
        add_reported "$(restic_summary "restic-$be-rerun-$r")"
    done
}

# add_reported BYTES : adds "reported_added_bytes" to the last JSON line of the results.
add_reported() {
    [[ -n "$1" ]] || return 0
    local last
    last=$(tail -1 "$OUT")
    sed -i '$d' "$OUT"
    echo "${last%\}},\"reported_added_bytes\":$1}" >>"$OUT"
}

restic_incremental() {
    local be="$1" url
    export RESTIC_CACHE_DIR="$SCRATCH/restic-cache-$be"
    restic_repo "$be" "shoot-$REPS"
    maybe_cold
    log "restic/$be: incremental backup after mutate"
    measure restic "$be" incremental 1 "$DATA_BYTES" "$RESTIC_DIR" changed_bytes="$CHANGED_BYTES" -- \
        sh -c "cd '$DATA' && exec restic -r '$url' backup --json --host bench --compression $RESTIC_COMPRESSION ."
    add_reported "$(restic_summary "restic-$be-incremental-1")"
}

restic_restore() {
    local be="$1" url r dest ok
    export RESTIC_CACHE_DIR="$SCRATCH/restic-cache-$be"
    restic_repo "$be" "shoot-$REPS"
    for r in $(seq "$REPS"); do
        dest="$SCRATCH/restore"
        rm -rf "$dest"
        maybe_cold
        log "restic/$be: restore $r/$REPS"
        # sync inside the timed command: the data is on disk when the restore is counted done.
        measure restic "$be" restore "$r" "$DATA_BYTES" "" -- \
            sh -c "restic -r '$url' restore latest --target '$dest' && sync"
        ok=$(verify_restore "$dest")
        add_field verified "$ok"
    done
    rm -rf "$SCRATCH/restore"
}

# add_field KEY VALUE : adds a field to the last JSON line of the results.
add_field() {
    local last v="$2"
    [[ "$v" =~ ^(true|false|-?[0-9.]+)$ ]] || v="\"$v\""
    last=$(tail -1 "$OUT")
    sed -i '$d' "$OUT"
    echo "${last%\}},\"$1\":$v}" >>"$OUT"
}

restic_small() {
    local be="$1" url r
    [[ -n "$SMALL" ]] || return 0
    export RESTIC_CACHE_DIR="$SCRATCH/restic-cache-$be-small"
    for r in $(seq "$REPS"); do
        if [[ $r -gt 1 ]]; then restic_repo "$be" "small-$((r - 1))"; rm -rf "$RESTIC_DIR"; fi
        restic_repo "$be" "small-$r"
        rm -rf "$RESTIC_DIR" "$RESTIC_CACHE_DIR"
        restic -r "$url" init --repository-version 2 >"$LOGS/restic-$be-small-init.log" 2>&1 || return 1
        maybe_cold
        log "restic/$be: small files, initial backup $r/$REPS"
        measure restic "$be" small-initial "$r" "$SMALL_BYTES" "$RESTIC_DIR" files="$SMALL_FILES" -- \
            sh -c "cd '$SMALL' && exec restic -r '$url' backup --json --host bench --compression $RESTIC_COMPRESSION ."
        add_reported "$(restic_summary "restic-$be-small-initial-$r")"
    done
    for r in $(seq "$REPS"); do
        maybe_cold
        log "restic/$be: small files, unchanged rescan $r/$REPS"
        measure restic "$be" small-rescan "$r" "$SMALL_BYTES" "$RESTIC_DIR" files="$SMALL_FILES" -- \
            sh -c "cd '$SMALL' && exec restic -r '$url' backup --json --host bench --compression $RESTIC_COMPRESSION ."
        add_reported "$(restic_summary "restic-$be-small-rescan-$r")"
    done
}

# ---------------------------------------------------------------------------------------------
# borg (local repository; borg 1.2 has no REST backend, only ssh).

borg_added() { # LOGNAME -> deduplicated_size of the archive just created (the tool's "bytes added")
    python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["archive"]["stats"]["deduplicated_size"])' "$LOGS/$1.out" 2>/dev/null
}
BORG_N=0
borg_create() { # REPO SRC : sets BORG_CMD, the command line creating the next archive
    BORG_N=$((BORG_N + 1))
    BORG_CMD="cd '$2' && exec borg create --json --compression $BORG_COMPRESSION '$1::a$BORG_N' ."
}

borg_phase1() {
    local r repo="$SCRATCH/borg-shoot"
    for r in $(seq "$REPS"); do
        rm -rf "$repo" "$BORG_BASE_DIR"
        borg init -e "$BORG_ENCRYPTION" "$repo" >"$LOGS/borg-init.log" 2>&1 || { log "borg init failed"; return 1; }
        maybe_cold
        log "borg: initial backup $r/$REPS"
        borg_create "$repo" "$DATA"
        measure borg local initial "$r" "$DATA_BYTES" "$repo" -- sh -c "$BORG_CMD"
        add_reported "$(borg_added "borg-local-initial-$r")"
    done
    for r in $(seq "$REPS"); do
        maybe_cold
        log "borg: unchanged re-run $r/$REPS"
        borg_create "$repo" "$DATA"
        measure borg local rerun "$r" "$DATA_BYTES" "$repo" -- sh -c "$BORG_CMD"
        add_reported "$(borg_added "borg-local-rerun-$r")"
    done
}

borg_incremental() {
    local repo="$SCRATCH/borg-shoot"
    maybe_cold
    log "borg: incremental backup after mutate"
    borg_create "$repo" "$DATA"
    measure borg local incremental 1 "$DATA_BYTES" "$repo" changed_bytes="$CHANGED_BYTES" -- sh -c "$BORG_CMD"
    add_reported "$(borg_added "borg-local-incremental-1")"
}

borg_restore() {
    local r repo="$SCRATCH/borg-shoot" dest="$SCRATCH/restore"
    for r in $(seq "$REPS"); do
        rm -rf "$dest"
        mkdir -p "$dest"
        maybe_cold
        log "borg: restore $r/$REPS"
        measure borg local restore "$r" "$DATA_BYTES" "" -- sh -c "cd '$dest' && borg extract '$repo::a$BORG_N' && sync"
        add_field verified "$(verify_restore "$dest")"
    done
    rm -rf "$dest"
}

borg_small() {
    local r repo="$SCRATCH/borg-small"
    [[ -n "$SMALL" ]] || return 0
    for r in $(seq "$REPS"); do
        rm -rf "$repo"
        borg init -e "$BORG_ENCRYPTION" "$repo" >"$LOGS/borg-small-init.log" 2>&1 || return 1
        maybe_cold
        log "borg: small files, initial backup $r/$REPS"
        borg_create "$repo" "$SMALL"
        measure borg local small-initial "$r" "$SMALL_BYTES" "$repo" files="$SMALL_FILES" -- sh -c "$BORG_CMD"
        add_reported "$(borg_added "borg-local-small-initial-$r")"
    done
    for r in $(seq "$REPS"); do
        maybe_cold
        log "borg: small files, unchanged rescan $r/$REPS"
        borg_create "$repo" "$SMALL"
        measure borg local small-rescan "$r" "$SMALL_BYTES" "$repo" files="$SMALL_FILES" -- sh -c "$BORG_CMD"
        add_reported "$(borg_added "borg-local-small-rescan-$r")"
    done
}

# ---------------------------------------------------------------------------------------------
# KEEPSAKE HOOKS: Keepsake measured with the same measure() helper as the peers.
#
#   keepsake_setup:       starts `keepsake-server serve` (embedded PostgreSQL) on a loopback port
#                         with a data dir under SCRATCH/keepsake, creates an organisation,
#                         enrols an agent, then measures the engine without network:
#                         `keepsake pack` of the shoot into SCRATCH/keepsake/pack-out (backend
#                         "engine", op "pack"; REPS times, the output deleted after each).
#   keepsake_phase1:      initial `keepsake backup` through the server (a fresh server data dir,
#                         organisation and agent home per repetition, like a fresh repository),
#                         then the unchanged re-runs against the last one.
#   keepsake_incremental: after the mutate, the incremental backup (bytes_new as the tool's
#                         "added", bytes_sent beside it).
#   keepsake_restore:     `keepsake restore --point latest` into an empty folder, plus `sync`,
#                         verified against the dataset; time to first byte from the agent's report.
#   keepsake_small:       fresh server per repetition: initial backup of the small files, then
#                         unchanged re-runs (op small-rescan) and `keepsake scan` (op small-scan).
#   keepsake_teardown:    stops the server (and with it its PostgreSQL cluster).
#
# Keepsake's measurements run with SERVER_PID set to the keepsake-server's pid (KS_PID) and
# SERVER_PG_PIDFILE to its cluster's postmaster.pid, so each of those lines records the server's CPU time INCLUDING PostgreSQL
# (server_cpu_s; server_pg_cpu_s is the PostgreSQL part) and the server's peak RSS
# (server_peak_rss_mb: VmHWM of keepsake-server; server_pg_peak_rss_mb: the largest VmHWM of the
# cluster's processes, shared buffers they touched included).
#
# As root, the embedded cluster runs as the `postgres` account, which must be able to traverse
# SCRATCH (e.g. a folder under /tmp or /var/lib, not under /root).

KS_BIN="${KS_BIN:-$root/target/release}"   # where keepsake and keepsake-server are
KS_OK=0
KS_DIR=""       # SCRATCH/keepsake
KS_SRV=""       # data dir of the running server
KS_URL=""
KS_HOME=""      # agent home that backs up the shoot
KS_PASS=""      # passphrase file (throwaway)
KS_AGENT_HOME=""
KS_CAT_HOME=""
KS_PID=""       # the running keepsake-server (kept apart from SERVER_PID, which the REST runs reuse)
KS_PGFILE=""

ks_note() { emit tool=keepsake backend="${2:-server}" op="${3:-setup}" ok=false note="$1" >/dev/null; log "keepsake: $1"; }

ks_server_stop() {
    if [[ -n "$KS_PID" ]]; then
        kill "$KS_PID" 2>/dev/null   # SIGTERM: the server stops its PostgreSQL cluster too
        wait "$KS_PID" 2>/dev/null
    fi
    KS_PID=""
    KS_PGFILE=""
}

# ks_measure ARGS... : measure with the keepsake-server (and its cluster) as the server process.
ks_measure() { SERVER_PID="$KS_PID" SERVER_PG_PIDFILE="$KS_PGFILE" measure "$@"; }

# ks_server_start NAME : a fresh keepsake-server with its data dir in KS_DIR/NAME/srv.
ks_server_start() {
    local name="$1" port i
    ks_server_stop
    rm -rf "${KS_DIR:?}/$name"
    KS_SRV="$KS_DIR/$name/srv"
    mkdir -p "$KS_SRV"
    port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    KS_URL="http://127.0.0.1:$port"
    "$KS_BIN/keepsake-server" serve --bind "127.0.0.1:$port" --data-dir "$KS_SRV" >"$LOGS/keepsake-server-$name.log" 2>&1 &
    KS_PID=$!
    for i in $(seq 240); do
        if python3 -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=2)' "$KS_URL/readyz" 2>/dev/null; then
            KS_PGFILE="$KS_SRV/postgres/data/postmaster.pid"
            [[ -r "$KS_PGFILE" ]] || log "keepsake: no $KS_PGFILE: PostgreSQL CPU will not be counted"
            return 0
        fi
        kill -0 "$KS_PID" 2>/dev/null || break
        sleep 0.5
    done
    log "keepsake-server did not become ready (see $LOGS/keepsake-server-$name.log)"
    tail -3 "$LOGS/keepsake-server-$name.log" >&2
    ks_server_stop
    return 1
}

# ks_agent NAME : a new organisation on the running server and a fresh agent home enrolled in it
# (KS_DIR/NAME/home); sets KS_AGENT_HOME.
ks_agent() {
    local name="$1" out token
    KS_AGENT_HOME="$KS_DIR/$name/home"
    rm -rf "$KS_AGENT_HOME"
    out=$("$KS_BIN/keepsake-server" admin create-org "Bench $name" --json --data-dir "$KS_SRV" 2>>"$LOGS/keepsake-admin.log") ||
        { log "keepsake: create-org failed (see $LOGS/keepsake-admin.log)"; return 1; }
    token=$(python3 -c 'import json, sys; print(json.loads(sys.argv[1])["enroll_token"])' "$out") || return 1
    "$KS_BIN/keepsake" --home "$KS_AGENT_HOME" enroll --server "$KS_URL" --token "$token" \
        --name "bench-$name" --passphrase-file "$KS_PASS" >>"$LOGS/keepsake-enroll.log" 2>&1 ||
        { log "keepsake: enroll failed (see $LOGS/keepsake-enroll.log)"; return 1; }
}

# ks_field LOGNAME KEY : KEY of the summary of `keepsake backup --json` (the first root).
ks_field() {
    python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
s = d[0]["summary"] if isinstance(d, list) else d
print(s[sys.argv[2]])' "$LOGS/$1.out" "$2" 2>/dev/null
}

# ks_measure_backup BACKEND OP REP BYTES PATH HOME [extra...] : measure + the agent's own figures.
ks_measure_backup() {
    local be="$1" op="$2" r="$3" bytes="$4" path="$5" home="$6"
    shift 6
    ks_measure keepsake "$be" "$op" "$r" "$bytes" "$KS_SRV/storage" "$@" -- \
        "$KS_BIN/keepsake" --home "$home" backup "$path" --json
    add_reported "$(ks_field "keepsake-$be-$op-$r" bytes_new)"
    add_field bytes_sent "$(ks_field "keepsake-$be-$op-$r" bytes_sent)"
}

keepsake_setup() {
    local r out
    KS_OK=0
    if [[ ! -x "$KS_BIN/keepsake" || ! -x "$KS_BIN/keepsake-server" ]]; then
        ks_note "not built (cargo build --release -p keepsake-server -p keepsake-agent --bins)"
        return 1
    fi
    KS_DIR="$SCRATCH/keepsake"
    mkdir -p "$KS_DIR"
    if [[ $(id -u) -eq 0 ]] && id postgres >/dev/null 2>&1 && ! runuser -u postgres -- test -x "$KS_DIR"; then
        ks_note "the postgres account cannot traverse $KS_DIR (as root the embedded cluster runs as postgres): use a SCRATCH under /tmp or /var/lib"
        return 1
    fi
    KS_PASS="$KS_DIR/passphrase"
    echo "keepsake-bench-throwaway-passphrase" >"$KS_PASS"
    ks_server_start shoot-1 && ks_agent shoot-1 || { ks_note "server or enrolment failed"; return 1; }
    KS_HOME="$KS_AGENT_HOME"
    KS_OK=1
    log "keepsake $("$KS_BIN/keepsake" --version | cut -d' ' -f2): server $KS_URL, data $KS_SRV"

    # The engine without network: read, chunk, hash, compress-or-skip, encrypt, write packs.
    out="$KS_DIR/pack-out"
    for r in $(seq "$REPS"); do
        rm -rf "$out"
        maybe_cold
        log "keepsake: engine (pack) $r/$REPS"
        measure keepsake engine pack "$r" "$DATA_BYTES" "" -- \
            "$KS_BIN/keepsake" --home "$KS_HOME" pack "$DATA" --out "$out" --keys "$KS_HOME/keys.json" --json
        add_field out_bytes "$(bytes_of "$out")"
        rm -rf "$out"
    done
}

keepsake_phase1() {
    local r
    [[ $KS_OK -eq 1 ]] || return 0
    for r in $(seq "$REPS"); do
        if [[ $r -gt 1 ]]; then
            ks_server_stop
            rm -rf "${KS_DIR:?}/shoot-$((r - 1))"
            ks_server_start "shoot-$r" && ks_agent "shoot-$r" || { ks_note "server or enrolment failed" server initial; KS_OK=0; return 0; }
            KS_HOME="$KS_AGENT_HOME"
        fi
        maybe_cold
        log "keepsake: initial backup $r/$REPS"
        ks_measure_backup server initial "$r" "$DATA_BYTES" "$DATA" "$KS_HOME"
        add_field pg_data_bytes "$(bytes_of "$KS_SRV/postgres")"
    done
    for r in $(seq "$REPS"); do
        maybe_cold
        log "keepsake: unchanged re-run $r/$REPS"
        ks_measure_backup server rerun "$r" "$DATA_BYTES" "$DATA" "$KS_HOME"
    done
}

keepsake_incremental() {
    [[ $KS_OK -eq 1 ]] || return 0
    maybe_cold
    log "keepsake: incremental backup after mutate"
    ks_measure_backup server incremental 1 "$DATA_BYTES" "$DATA" "$KS_HOME" changed_bytes="$CHANGED_BYTES"
}

keepsake_restore() {
    local r dest="$SCRATCH/restore" name
    [[ $KS_OK -eq 1 ]] || return 0
    for r in $(seq "$REPS"); do
        rm -rf "$dest"
        maybe_cold
        log "keepsake: restore $r/$REPS"
        name="keepsake-server-restore-$r"
        # sync inside the timed command, as for the peers.
        ks_measure keepsake server restore "$r" "$DATA_BYTES" "" -- sh -c \
            "'$KS_BIN/keepsake' --home '$KS_HOME' restore --point latest --to '$dest' --passphrase-file '$KS_PASS' --json && sync"
        add_field verified "$(verify_restore "$dest")"
        add_field ttfb_s "$(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
t = d["time_to_first_byte"]
print("%.3f" % (t["secs"] + t["nanos"] / 1e9))' "$LOGS/$name.out" 2>/dev/null)"
    done
    rm -rf "$dest"
    ks_server_stop   # not left idling while the peers measure the small files
}

keepsake_small() {
    local r
    [[ $KS_OK -eq 1 && -n "$SMALL" ]] || return 0
    for r in $(seq "$REPS"); do
        ks_server_stop
        rm -rf "${KS_DIR:?}"/shoot-* "${KS_DIR:?}"/catalog "${KS_DIR:?}/small-$((r - 1))"
        ks_server_start "small-$r" && ks_agent "small-$r" || { ks_note "server or enrolment failed" server small-initial; return 0; }
        maybe_cold
        log "keepsake: small files, initial backup $r/$REPS"
        ks_measure_backup server small-initial "$r" "$SMALL_BYTES" "$SMALL" "$KS_AGENT_HOME" files="$SMALL_FILES"
    done
    for r in $(seq "$REPS"); do
        maybe_cold
        log "keepsake: small files, unchanged rescan $r/$REPS"
        ks_measure_backup server small-rescan "$r" "$SMALL_BYTES" "$SMALL" "$KS_AGENT_HOME" files="$SMALL_FILES"
    done
    for r in $(seq "$REPS"); do
        maybe_cold
        log "keepsake: small files, scan $r/$REPS"
        ks_measure keepsake agent small-scan "$r" "$SMALL_BYTES" "" files="$SMALL_FILES" -- \
            "$KS_BIN/keepsake" --home "$KS_AGENT_HOME" scan "$SMALL" --json
    done
}

keepsake_teardown() { ks_server_stop; }

# ---------------------------------------------------------------------------------------------
# The catalog edit alone: a folder holding only the Lightroom catalog, backed up before and after
# the mutate by each tool into a repository (organisation) of its own, so nothing else dedups
# against it. The bytes that really changed are counted page by page (4096 B, the catalog's page
# size) between the catalog before and after the edit.

CAT_DIR=""
CAT_REL=""
catalog_probe_before() {
    CAT_REL=$(cd "$DATA" && find . -name '*.lrcat' -type f | head -1)
    [[ -n "$CAT_REL" ]] || { emit kind=catalog_change ok=false note="no .lrcat in the dataset" >/dev/null; return 0; }
    CAT_DIR="$SCRATCH/catalog-only"
    rm -rf "$CAT_DIR" "$SCRATCH/catalog-before.lrcat"
    mkdir -p "$CAT_DIR"
    cp -a "$DATA/$CAT_REL" "$SCRATCH/catalog-before.lrcat"
    cp -a "$DATA/$CAT_REL" "$CAT_DIR/"
    CAT_BYTES=$(bytes_of "$CAT_DIR")
    local url
    if want restic && [[ $have_restic -eq 1 ]]; then
        export RESTIC_CACHE_DIR="$SCRATCH/restic-cache-catalog"
        restic_repo local catalog
        rm -rf "$RESTIC_DIR" "$RESTIC_CACHE_DIR"
        restic -r "$url" init --repository-version 2 >"$LOGS/restic-catalog-init.log" 2>&1 && {
            log "restic/local: catalog-only folder, initial"
            measure restic local catalog-initial 1 "$CAT_BYTES" "$RESTIC_DIR" -- \
                sh -c "cd '$CAT_DIR' && exec restic -r '$url' backup --json --host bench --compression $RESTIC_COMPRESSION ."
            add_reported "$(restic_summary restic-local-catalog-initial-1)"
        }
    fi
    if want borg && [[ $have_borg -eq 1 ]]; then
        rm -rf "$SCRATCH/borg-catalog"
        borg init -e "$BORG_ENCRYPTION" "$SCRATCH/borg-catalog" >"$LOGS/borg-catalog-init.log" 2>&1 && {
            log "borg: catalog-only folder, initial"
            borg_create "$SCRATCH/borg-catalog" "$CAT_DIR"
            measure borg local catalog-initial 1 "$CAT_BYTES" "$SCRATCH/borg-catalog" -- sh -c "$BORG_CMD"
            add_reported "$(borg_added borg-local-catalog-initial-1)"
        }
    fi
    if want keepsake && [[ $KS_OK -eq 1 ]] && ks_agent catalog; then
        KS_CAT_HOME="$KS_AGENT_HOME"
        log "keepsake: catalog-only folder, initial"
        ks_measure_backup server catalog-initial 1 "$CAT_BYTES" "$CAT_DIR" "$KS_CAT_HOME"
    fi
}

catalog_probe_after() {
    [[ -n "$CAT_DIR" ]] || return 0
    cp -a "$DATA/$CAT_REL" "$CAT_DIR/"
    local changed url
    changed=$(python3 - "$SCRATCH/catalog-before.lrcat" "$CAT_DIR/$(basename "$CAT_REL")" <<'PY'
import sys
P = 4096
a = open(sys.argv[1], "rb").read()
b = open(sys.argv[2], "rb").read()
pages = diff = 0
for off in range(0, max(len(a), len(b)), P):
    x, y = a[off:off + P], b[off:off + P]
    if x != y:
        pages += 1
        diff += sum(1 for i in range(max(len(x), len(y))) if i >= len(x) or i >= len(y) or x[i] != y[i])
print(pages, pages * P, diff, len(a), len(b))
PY
)
    read -r CAT_PAGES CAT_PAGE_BYTES CAT_DIFF_BYTES CAT_SIZE0 CAT_SIZE1 <<<"$changed"
    emit kind=catalog_change file="$CAT_REL" page_size=4096 changed_pages="$CAT_PAGES" changed_page_bytes="$CAT_PAGE_BYTES" \
        changed_bytes_exact="$CAT_DIFF_BYTES" size_before="$CAT_SIZE0" size_after="$CAT_SIZE1" >/dev/null
    log "catalog edit: $CAT_PAGES pages of 4096 B changed ($CAT_PAGE_BYTES B; $CAT_DIFF_BYTES bytes differ)"
    CAT_BYTES=$(bytes_of "$CAT_DIR")
    if want restic && [[ $have_restic -eq 1 && -d "$SCRATCH/restic-catalog" ]]; then
        export RESTIC_CACHE_DIR="$SCRATCH/restic-cache-catalog"
        restic_repo local catalog
        log "restic/local: catalog-only folder, after the edit"
        measure restic local catalog-incremental 1 "$CAT_BYTES" "$RESTIC_DIR" changed_bytes="$CAT_PAGE_BYTES" -- \
            sh -c "cd '$CAT_DIR' && exec restic -r '$url' backup --json --host bench --compression $RESTIC_COMPRESSION ."
        add_reported "$(restic_summary restic-local-catalog-incremental-1)"
    fi
    if want borg && [[ $have_borg -eq 1 && -d "$SCRATCH/borg-catalog" ]]; then
        log "borg: catalog-only folder, after the edit"
        borg_create "$SCRATCH/borg-catalog" "$CAT_DIR"
        measure borg local catalog-incremental 1 "$CAT_BYTES" "$SCRATCH/borg-catalog" changed_bytes="$CAT_PAGE_BYTES" -- sh -c "$BORG_CMD"
        add_reported "$(borg_added borg-local-catalog-incremental-1)"
    fi
    if want keepsake && [[ $KS_OK -eq 1 && -n "${KS_CAT_HOME:-}" ]]; then
        log "keepsake: catalog-only folder, after the edit"
        ks_measure_backup server catalog-incremental 1 "$CAT_BYTES" "$CAT_DIR" "$KS_CAT_HOME" changed_bytes="$CAT_PAGE_BYTES"
    fi
}
# END OF KEEPSAKE HOOKS
# ---------------------------------------------------------------------------------------------

have_restic=0; have restic && have_restic=1
have_borg=0; have borg && have_borg=1
for t in restic borg; do
    if ! have "$t"; then emit tool="$t" ok=false note="$t not installed (apt-get install restic borgbackup)"; fi
done
if want restic-rest && ! have rclone; then emit tool=restic backend=rest ok=false note="rclone not installed (apt-get install rclone)"; fi

want limits && limits

# Phase 1: before the edit day.
if want restic && [[ $have_restic -eq 1 ]]; then restic_phase1 local; fi
if want restic-rest && [[ $have_restic -eq 1 ]] && rest_start; then restic_phase1 rest; rest_stop; fi
if want borg && [[ $have_borg -eq 1 ]]; then borg_phase1; fi
if want keepsake; then keepsake_setup; keepsake_phase1; fi
catalog_probe_before

# The next day's edit, applied once; every tool then backs up the same change.
log "gen-shoot mutate"
MUTATION=$("$GEN_SHOOT" mutate "$DATA" --day 1)
CHANGED_BYTES=$(python3 -c '
import json, sys
m = json.loads(sys.argv[1])
print(m["new_bytes"])' "$MUTATION")
emit kind=mutation new_bytes="$CHANGED_BYTES" new_photos="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["new_photos"])' "$MUTATION")" \
    xmp_rewritten="$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["xmp_rewritten"])' "$MUTATION")" \
    catalog_rows_updated="$(python3 -c 'import json,sys; m=json.loads(sys.argv[1]); print(m["catalog_rows_updated"] + m["develop_settings_updated"])' "$MUTATION")" >/dev/null
DATA_BYTES=$(bytes_of "$DATA")
(cd "$DATA" && find . -type f -print0 | sort -z | xargs -0 b3sum) >"$SCRATCH/dataset.b3"
catalog_probe_after

# Phase 2: incremental backups, then full restores of the edited shoot.
if want restic && [[ $have_restic -eq 1 ]]; then restic_incremental local; restic_restore local; fi
if want restic-rest && [[ $have_restic -eq 1 ]] && rest_start; then restic_incremental rest; restic_restore rest; rest_stop; fi
if want borg && [[ $have_borg -eq 1 ]]; then borg_incremental; borg_restore; fi
if want keepsake; then keepsake_incremental; keepsake_restore; fi

# Phase 3: the metadata-scan probe.
if [[ -n "$SMALL" ]]; then
    if want restic && [[ $have_restic -eq 1 ]]; then restic_small local; fi
    if want restic-rest && [[ $have_restic -eq 1 ]] && rest_start; then restic_small rest; rest_stop; fi
    if want borg && [[ $have_borg -eq 1 ]]; then borg_small; fi
fi
if want keepsake; then keepsake_small; keepsake_teardown; fi

emit kind=end date="$(date -Is)" uptime="$(uptime)" >/dev/null
python3 "$here/summarize.py" "$OUT" | tee "${OUT%.jsonl}.md"
