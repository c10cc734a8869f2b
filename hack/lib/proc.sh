# SPDX-License-Identifier: Apache-2.0
# Components run as processes of their own session, sourced by hack/cluster.sh and hack/node.sh. The caller
# sets RUN (PID files: $RUN/<name>.pid) and LOGS (output: $LOGS/<name>.log) and defines log and die.

pid_alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
pid_of() { cat "$RUN/$1.pid" 2>/dev/null || true; }

# start_component NAME COMMAND...: starts COMMAND in its own session, so that it outlives the caller.
start_component() {
  local name="$1"; shift
  mkdir -p "$LOGS" "$RUN"
  setsid "$@" >>"$LOGS/$name.log" 2>&1 < /dev/null &
  echo $! > "$RUN/$name.pid"
}

# wait_for NAME SECONDS PID CHECK...: until CHECK succeeds; dies with the log's tail when PID exits first
# or SECONDS pass.
wait_for() {
  local what="$1" seconds="$2" pid="$3"; shift 3
  local deadline=$(( $(date +%s) + seconds ))
  until "$@" >/dev/null 2>&1; do
    pid_alive "$pid" || die "$what exited during start-up; last log lines:
$(tail -n 15 "$LOGS/$what.log" 2>/dev/null)"
    [ "$(date +%s)" -lt "$deadline" ] || die "$what not ready after ${seconds}s (log: $LOGS/$what.log)"
    sleep 0.2
  done
}

# stop_component NAME [SECONDS]: SIGTERM, SIGKILL after SECONDS (default 20); returns once the process is gone.
stop_component() {
  local name="$1" seconds="${2:-20}" pid deadline
  pid="$(pid_of "$name")"
  if pid_alive "$pid"; then
    kill -TERM "$pid" 2>/dev/null || true
    deadline=$(( $(date +%s) + seconds ))
    while pid_alive "$pid" && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
    if pid_alive "$pid"; then log "$name (pid $pid) ignored SIGTERM; killing"; kill -KILL "$pid" 2>/dev/null || true; fi
    while pid_alive "$pid"; do sleep 0.05; done
    log "stopped $name (pid $pid)"
  fi
  rm -f "$RUN/$name.pid"
}
