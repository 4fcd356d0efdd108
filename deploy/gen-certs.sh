#!/usr/bin/env bash
# Makes the certificates of a Tessera cluster with the openssl CLI: a cluster
# CA; per member id, a certificate whose common name is "node-<id>" (what
# tessera-server's --peer-cert and --tls-cert must name), for both ports; and,
# with --user, client certificates whose common name is the user. Existing
# files are kept, so running it again adds members or users without
# replacing anything.
#
# Usage: deploy/gen-certs.sh DIR ID [ID...]
#        deploy/gen-certs.sh DIR --user NAME [NAME...]
#   DIR/ca.crt, DIR/ca.key            the cluster CA (keep ca.key offline in production)
#   DIR/node-<id>.crt, .key           member <id>: --peer-cert/--peer-key and --tls-cert/--tls-key
#   DIR/user-<name>.crt, .key         a client certificate for user <name> (tessera --tls-cert)
# Then start each member with --peer-ca=DIR/ca.crt (and --tls-ca=DIR/ca.crt).
# A member's certificate names DNS node-<id>, localhost and 127.0.0.1, plus the
# hosts in $TESSERA_CERT_HOSTS (comma-separated names or IPv4 addresses: the
# hosts clients dial). Keys are EC P-256; certificates are valid for 10 years
# (days: $TESSERA_CERT_DAYS; a negative number makes expired ones, for tests).
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n '2,18p' "$0" >&2; exit 2; }
dir=$1
shift
days=${TESSERA_CERT_DAYS:-3650}
command -v openssl >/dev/null || { echo "gen-certs: openssl is not installed (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
chmod 700 "$dir"
umask 077

if [[ ! -f "$dir/ca.crt" || ! -f "$dir/ca.key" ]]; then
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 3650 \
    -subj "/O=tessera/CN=tessera-cluster-ca" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
fi

# sign NAME FILE EXTENSIONS: a key and a CA-signed certificate for common name NAME.
sign() {
  local name=$1 file=$2 ext
  [[ -f "$dir/$file.crt" && -f "$dir/$file.key" ]] && return 0
  ext=$(mktemp)
  printf '%s\n' "$3" >"$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/O=tessera/CN=$name" \
    -keyout "$dir/$file.key" -out "$dir/$file.csr" 2>/dev/null
  openssl x509 -req -in "$dir/$file.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
    -days "$days" -extfile "$ext" -out "$dir/$file.crt" 2>/dev/null
  rm -f "$dir/$file.csr" "$ext"
}

if [[ $1 == --user ]]; then
  shift
  for user in "$@"; do
    [[ "$user" =~ ^[A-Za-z0-9._@-]{1,64}$ && "$user" != node-* ]] ||
      { echo "gen-certs: bad user name '$user' (letters, digits, . _ @ -; not node-*)" >&2; exit 2; }
    sign "$user" "user-$user" \
      "$(printf 'extendedKeyUsage=clientAuth\nkeyUsage=digitalSignature,keyEncipherment')"
  done
else
  for id in "$@"; do
    [[ "$id" =~ ^[1-9][0-9]*$ ]] || { echo "gen-certs: bad member id '$id'" >&2; exit 2; }
    sans="DNS:node-$id,DNS:localhost,IP:127.0.0.1"
    IFS=',' read -ra hosts <<<"${TESSERA_CERT_HOSTS:-}"
    for h in "${hosts[@]}"; do
      [[ -z $h ]] && continue
      if [[ $h =~ ^[0-9.]+$ ]]; then sans="$sans,IP:$h"; else sans="$sans,DNS:$h"; fi
    done
    sign "node-$id" "node-$id" \
      "$(printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nkeyUsage=digitalSignature,keyEncipherment' "$sans")"
  done
fi
chmod 644 "$dir"/*.crt
