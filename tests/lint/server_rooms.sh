#!/usr/bin/env bash
# Keeps the direction of server/'s rooms (server/README.md, "Layout"): a
# room may include headers only from the rooms listed for it below, so the
# dependency graph stays a ladder (lower rooms never reach up). Also rejects
# server/ headers included from client/, raft/ or storage/, and test helpers
# (tests/) included from server/.
set -euo pipefail
root=${1:?usage: server_rooms.sh SOURCE_DIR}
cd "$root"

declare -A may_use=(
  [security]=""
  [raftstore]=""
  [kv]="raftstore"
  [cluster]="raftstore kv security"
  [transport]="raftstore cluster security"
  [api]="raftstore kv cluster security"
  [observability]="raftstore kv cluster transport api security"
  [cmd]="raftstore kv cluster transport api observability security"
)

status=0
for dir in server/*/; do
  room=$(basename "$dir")
  if [[ -z ${may_use[$room]+set} ]]; then
    echo "server/$room/ is not a known room: add it to tests/lint/server_rooms.sh and server/README.md"
    status=1
    continue
  fi
  while IFS= read -r hit; do
    used=$(sed -E 's#.*"server/([a-z_]+)/.*#\1#' <<<"$hit")
    [[ $used == "$room" ]] && continue
    if [[ " ${may_use[$room]} " != *" $used "* ]]; then
      echo "server/$room may not use server/$used: $hit"
      status=1
    fi
  done < <(grep -rnE '#include "server/[a-z_]+/' "$dir" --include='*.h' --include='*.cc' || true)
done

if hits=$(ls server/*.h server/*.cc 2>/dev/null); then
  echo "server/ keeps no sources at its top; each file belongs to a room:"
  echo "$hits"
  status=1
fi
if hits=$(grep -rnE '#include "tests/' server --include='*.h' --include='*.cc'); then
  echo "server/ must not use test helpers:"
  echo "$hits"
  status=1
fi
if hits=$(grep -rnE '#include "server/' client raft storage --include='*.h' --include='*.cc'); then
  echo "client/, raft/ and storage/ must not use server/:"
  echo "$hits"
  status=1
fi
[[ $status -eq 0 ]] && echo "server/ rooms keep their direction"
exit $status
