#!/usr/bin/env bash
# Replays a slice of the labelled corpus through a local gateway, so you can
# watch reads pass and destructive requests wait on the dashboard.
#
#   bash examples/demo.sh [replay options, e.g. --limit 60 --api stripe]
#
# Needs the corpus at ../shared/corpus/dev.jsonl (beside the repository);
# set CORPUS to use another file.
set -euo pipefail

cd "$(dirname "$0")/.."
corpus="${CORPUS:-../shared/corpus/dev.jsonl}"
[ -f "$corpus" ] || { echo "demo: no corpus at $corpus (set CORPUS)" >&2; exit 1; }

cargo build --release -q -p midosoc-server -p midosoc-bench
bin="$(pwd)/target/release"

work="$(mktemp -d)"
pids=()
stop() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap 'stop; exit 130' INT TERM

# A free local port, probed from the top of the ephemeral range downwards.
free_port() {
    local port
    for port in $(seq "$1" -1 20000); do
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
            echo "$port"
            return
        fi
    done
    return 1
}

# The upstream answers every request with a small JSON body.
"$bin/upstream" >"$work/upstream.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do grep -q '^listening' "$work/upstream.log" && break; sleep 0.1; done
upstream="$(awk '/^listening/ {print $2; exit}' "$work/upstream.log")"
[ -n "$upstream" ] || { echo "demo: upstream did not start" >&2; stop; exit 1; }

agent_port="$(free_port 48080)"
review_port="$(free_port $((agent_port - 1)))"
cat >"$work/midosoc.toml" <<TOML
data_dir = "$work/data"

[agent]
listen = "127.0.0.1:$agent_port"

[review]
listen = "127.0.0.1:$review_port"

[[upstream]]
name = "github"
prefix = "/github/"
url = "http://$upstream/"

[[upstream]]
name = "stripe"
prefix = "/stripe/"
url = "http://$upstream/"

[[upstream]]
name = "mcp"
prefix = "/mcp/"
url = "http://$upstream/"

[[upstream]]
name = "other"
prefix = "/other/"
url = "http://$upstream/"
TOML
export MIDOSOC_CONFIG="$work/midosoc.toml"

"$bin/midosoc" serve >"$work/gateway.log" 2>&1 &
gateway=$!
pids+=("$gateway")
for _ in $(seq 100); do grep -q 'dashboard:' "$work/gateway.log" && break; sleep 0.1; done
grep -q 'dashboard:' "$work/gateway.log" || { cat "$work/gateway.log" >&2; stop; exit 1; }
# The first analyst's sign-in token, printed once at start-up.
token="$(awk '/^Sign in at/ {getline; print $1; exit}' "$work/gateway.log")"
if [ -z "$token" ]; then
    token="$("$bin/midosoc" analyst add demo-analyst --role approver | sed -n 2p)"
fi
key="$("$bin/midosoc" agent add demo | sed -n 2p)"

echo "dashboard:  http://127.0.0.1:$review_port/"
echo "sign in with this token: $token"
echo
MIDOSOC_AGENT_KEY="$key" "$bin/replay" --gateway "127.0.0.1:$agent_port" --corpus "$corpus" "$@"

trap - INT TERM
echo
echo "The gateway is still running, with the held requests pending on the"
echo "dashboard above. Stop it and the upstream, and remove $work, with:"
echo "  kill ${pids[*]}; rm -rf $work"
