#!/usr/bin/env bash
# Kept at the top level for users of the earlier kit: ./check_gateway.sh still works. See scripts/check_gateway.sh.
set -euo pipefail
test "${DEBUG:-}" && set -x
exec "$(dirname "${BASH_SOURCE[0]}")/scripts/check_gateway.sh" "$@"
