#!/usr/bin/env bash
# Entrypoint for one container (a Fly Machine) running token-sidecar beside an
# MCP server:   run-with-sidecar.sh MCP-SERVER-COMMAND [ARGS...]
#
# 1. starts `token-sidecar serve` (config from TOKEN_SIDECAR_CONFIG or the
#    TOKEN_SIDECAR_* environment);
# 2. waits until it hands out a token for $TOKEN_SIDECAR_PROFILE (default
#    "default"), at most $TOKEN_SIDECAR_START_TIMEOUT seconds (default 120);
# 3. starts the MCP server, without TOKEN_SIDECAR_CLIENT_SECRET (nor the cold-start
#    cache's TOKEN_SIDECAR_CACHE_KEY) in its environment;
# 4. on SIGTERM/SIGINT stops the MCP server first and the sidecar last, and
#    exits with the MCP server's status. If either process dies, the other is
#    stopped and the script exits non-zero, so the platform restarts the machine.
set -uo pipefail

if [ "$#" -eq 0 ]; then
  echo "usage: run-with-sidecar.sh MCP-SERVER-COMMAND [ARGS...]" >&2
  exit 2
fi

token-sidecar serve &
sidecar_pid=$!

stop_sidecar() {
  kill -TERM "$sidecar_pid" 2>/dev/null
  wait "$sidecar_pid" 2>/dev/null
}

profile=${TOKEN_SIDECAR_PROFILE:-default}
deadline=$((SECONDS + ${TOKEN_SIDECAR_START_TIMEOUT:-120}))
# `token-sidecar token` waits up to the profile's wait_timeout for a token.
until token-sidecar token "$profile" >/dev/null; do
  if ! kill -0 "$sidecar_pid" 2>/dev/null; then
    wait "$sidecar_pid"
    status=$?
    echo "run-with-sidecar: token-sidecar exited with status $status during startup" >&2
    exit $((status == 0 ? 1 : status))
  fi
  if [ "$SECONDS" -ge "$deadline" ]; then
    echo "run-with-sidecar: no token for profile '$profile' in time; see the sidecar's log" >&2
    stop_sidecar
    exit 1
  fi
  sleep 1
done

# The MCP server never gets the client secret (nor the key of the cold-start
# file, a Fly secret too): drop them from its environment.
(unset TOKEN_SIDECAR_CLIENT_SECRET TOKEN_SIDECAR_CACHE_KEY; exec "$@") &
app_pid=$!
trap 'kill -TERM "$app_pid" 2>/dev/null' TERM INT

# Returns when either process exits, or when a signal interrupts the wait.
wait -n "$app_pid" "$sidecar_pid"
if kill -0 "$app_pid" 2>/dev/null; then
  kill -TERM "$app_pid" 2>/dev/null
fi
wait "$app_pid"
app_status=$?
if ! kill -0 "$sidecar_pid" 2>/dev/null; then
  echo "run-with-sidecar: token-sidecar exited; stopping" >&2
  wait "$sidecar_pid"
  exit $((app_status == 0 ? 1 : app_status))
fi
stop_sidecar
exit "$app_status"
