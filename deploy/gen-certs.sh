#!/usr/bin/env bash
# Makes the peer certificates of a Tessera cluster with the openssl CLI: a
# cluster CA and, per member id, a certificate whose common name and DNS name
# are "node-<id>" (what tessera-server's --peer-cert must name), signed by the
# CA. Existing files are kept, so running it again adds members without
# replacing anything.
#
# Usage: deploy/gen-certs.sh DIR ID [ID...]
#   DIR/ca.crt, DIR/ca.key            the cluster CA (keep ca.key offline in production)
#   DIR/node-<id>.crt, .key           member <id>: --peer-cert, --peer-key
# Then start each member with --peer-ca=DIR/ca.crt.
# Keys are EC P-256; certificates are valid for 10 years (days: $TESSERA_CERT_DAYS).
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,13p' "$0" >&2; exit 2; }
dir=$1
shift
days=${TESSERA_CERT_DAYS:-3650}
command -v openssl >/dev/null || { echo "gen-certs: openssl is not installed (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
chmod 700 "$dir"
umask 077

if [[ ! -f "$dir/ca.crt" || ! -f "$dir/ca.key" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days "$days" \
    -subj "/O=tessera/CN=tessera-cluster-ca" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
fi

for id in "$@"; do
  [[ "$id" =~ ^[1-9][0-9]*$ ]] || { echo "gen-certs: bad member id '$id'" >&2; exit 2; }
  name="node-$id"
  [[ -f "$dir/$name.crt" && -f "$dir/$name.key" ]] && continue
  ext=$(mktemp)
  printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment\n' \
    "$name" >"$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=tessera/CN=$name" \
    -keyout "$dir/$name.key" -out "$dir/$name.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$name.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days "$days" -extfile "$ext" -out "$dir/$name.crt" 2>/dev/null
  rm -f "$dir/$name.csr" "$ext"
done
chmod 644 "$dir"/*.crt
