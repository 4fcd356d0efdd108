#!/usr/bin/env bash
# Fails if any C++ source of ours is not formatted with the repository's
# .clang-format (fix with: clang-format -i <files>).
set -euo pipefail
cd "${1:?usage: format_check.sh SOURCE_DIR}"
mapfile -t files < <(git ls-files '*.h' '*.cc' 2>/dev/null || find proto raft storage server client tests -name '*.h' -o -name '*.cc')
[[ ${#files[@]} -gt 0 ]] || { echo "no sources found"; exit 1; }
if ! clang-format --dry-run --Werror "${files[@]}" 2>/tmp/format_check.$$; then
  grep -E '^[^ ].*(warning|error):' /tmp/format_check.$$ | cut -d: -f1 | sort -u | sed 's/^/not formatted: /'
  rm -f /tmp/format_check.$$
  exit 1
fi
rm -f /tmp/format_check.$$
echo "${#files[@]} files formatted"
