#!/usr/bin/env bash
# Start the agentrt server with the example configuration (or the one in $AGENTRT_CONFIG).
# Extra arguments are passed to `agentrt serve`, e.g. ./server/launch.sh --port 9000 --scheduling-policy plas
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
config="${AGENTRT_CONFIG:-$here/agentrt.toml}"
if [ -z "${VIRTUAL_ENV:-}" ] && [ -f "$here/../.venv/bin/activate" ]; then
  # shellcheck disable=SC1091
  . "$here/../.venv/bin/activate"
fi
export AGENTRT_LOG_FORMAT="${AGENTRT_LOG_FORMAT:-json}"
exec agentrt serve --config "$config" "$@"
