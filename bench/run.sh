#!/usr/bin/env bash
# Runs the whole benchmark suite on this machine and writes
# bench/results/results.json, docs/benchmarks.md and
# docs/benchmarks-latency.png. Installs nginx, wrk and h2load from Debian
# when they are missing. All load stays on loopback.
#
#   bash bench/run.sh              # everything, three repetitions
#   bash bench/run.sh --reps 1     # quicker, noisier
#   bash bench/run.sh --only perf  # some scenarios: perf,classifier,held,decision
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx)
command -v wrk >/dev/null || need+=(wrk)
command -v h2load >/dev/null || need+=(nghttp2-client)
if [ ${#need[@]} -gt 0 ]; then
  echo "== installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
export PATH="$PATH:/usr/sbin"

# Held requests need many descriptors; raise the soft limit as far as the
# hard limit allows.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

echo "== building (release)"
cargo build --release -p midosoc-server -p midosoc-bench --bins

case " $* " in
  *" --only "*classifier*|*" --only="*classifier*) run_criterion=1 ;;
  *" --only "*|*" --only="*) run_criterion=0 ;;
  *) run_criterion=1 ;;
esac
if [ "$run_criterion" = 1 ]; then
  echo "== classifier benchmark (criterion)"
  cargo bench -p midosoc-bench --bench classifier -- \
    --warm-up-time 1 --measurement-time 3 --noplot
fi

echo "== suite"
./target/release/bench "$@"
