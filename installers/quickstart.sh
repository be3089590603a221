#!/usr/bin/env bash
# Keepsake quickstart: builds the server and the agent, starts the server with its embedded
# PostgreSQL and local storage, creates an organisation, enrols an agent, backs up FOLDER and
# prints how to restore it. The server then keeps running in the foreground (Ctrl-C stops it).
#
#   installers/quickstart.sh [FOLDER]
#
# Without FOLDER a small demo folder is created. State lives in $KEEPSAKE_QUICKSTART_DIR
# (default ~/.keepsake-quickstart): the agent's home, the passphrase file, the server log.
# The server keeps its data in its default data directory (see README.md).
set -euo pipefail

repo="$(cd "$(dirname "$0")/.." && pwd)"
state="${KEEPSAKE_QUICKSTART_DIR:-$HOME/.keepsake-quickstart}"
bind="${KEEPSAKE_BIND:-127.0.0.1:8420}"
url="http://$bind"
mkdir -p "$state"
chmod 700 "$state"

folder="${1:-}"
if [ -z "$folder" ]; then
    folder="$state/demo-shoot"
    mkdir -p "$folder/DCIM/100EOSR5"
    for i in 1 2 3; do
        head -c 2000000 /dev/urandom > "$folder/DCIM/100EOSR5/IMG_000$i.CR3"
        printf '<x:xmpmeta rating="%s"/>\n' "$i" > "$folder/DCIM/100EOSR5/IMG_000$i.xmp"
    done
    echo "quickstart: no folder given; backing up a demo folder: $folder"
fi
[ -d "$folder" ] || { echo "quickstart: $folder is not a folder" >&2; exit 2; }

echo "quickstart: building (release)…"
(cd "$repo" && cargo build --release -q -p keepsake-server -p keepsake-agent)
server_bin="$repo/target/release/keepsake-server"
agent_bin="$repo/target/release/keepsake"
agent=("$agent_bin" --home "$state/agent")

echo "quickstart: starting keepsake-server on $url (log: $state/server.log)"
"$server_bin" serve --bind "$bind" >"$state/server.log" 2>&1 &
server_pid=$!
trap 'kill -TERM $server_pid 2>/dev/null; wait $server_pid 2>/dev/null' EXIT INT TERM
for _ in $(seq 1 600); do
    if curl -fsS "$url/readyz" >/dev/null 2>&1; then break; fi
    if ! kill -0 "$server_pid" 2>/dev/null; then
        echo "quickstart: the server stopped; see $state/server.log" >&2
        tail -n 20 "$state/server.log" >&2
        exit 1
    fi
    sleep 0.2
done
curl -fsS "$url/readyz" >/dev/null || { echo "quickstart: server not ready" >&2; exit 1; }
echo "quickstart: server ready ($url/readyz answers 200)"

if [ ! -f "$state/agent/agent.toml" ]; then
    created="$(KEEPSAKE_LOG=warn "$server_bin" admin create-org "Quickstart Studio $(date +%s)" --json)"
    token="$(printf '%s' "$created" | sed -n 's/.*"enroll_token": *"\([^"]*\)".*/\1/p')"
    admin="$(printf '%s' "$created" | sed -n 's/.*"admin_token": *"\([^"]*\)".*/\1/p')"
    printf '%s\n' "$admin" > "$state/admin-token"
    chmod 600 "$state/admin-token"
    if [ ! -f "$state/passphrase" ]; then
        (umask 077; head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' > "$state/passphrase")
    fi
    KEEPSAKE_ENROLL_TOKEN="$token" "${agent[@]}" enroll --server "$url" --name "$(hostname)" \
        --passphrase-file "$state/passphrase" --paper-key-out "$state/paper-key.txt"
fi

echo "quickstart: backing up $folder"
"${agent[@]}" backup "$folder"

cat <<EOF

Backed up. To see and restore it:

  ${agent[*]} points
  ${agent[*]} ls --point latest
  ${agent[*]} restore --point latest --to /tmp/keepsake-restore --passphrase-file $state/passphrase

The organisation's passphrase is in $state/passphrase and its paper key in
$state/paper-key.txt: keep them somewhere safe; without them nobody (the server included) can
read the backups. The server keeps running; press Ctrl-C to stop it.
EOF
wait "$server_pid"
