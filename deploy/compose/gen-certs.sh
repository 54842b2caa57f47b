#!/usr/bin/env bash
# Make a throwaway CA, a NATS server certificate (nats-1..3, localhost, 127.0.0.1) and a client
# certificate for the TLS variant of the compose stack (compose.tls.yaml), with openssl.
#
#   ./gen-certs.sh [DIR]        # default DIR: ./tls next to this script; existing files are kept
#
# For development only: the CA key is left in DIR. Use your own PKI anywhere else.
set -euo pipefail

dir="${1:-$(dirname "$0")/tls}"
days="${CERT_DAYS:-365}"
mkdir -p "$dir"
cd "$dir"

if [[ -f ca.pem && -f server.pem && -f client.pem ]]; then
  echo "certificates already in $dir (delete them to make new ones)"
  exit 0
fi

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days "$days" \
  -subj "/CN=durable development CA" -keyout ca-key.pem -out ca.pem \
  -addext "basicConstraints=critical,CA:TRUE,pathlen:0" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null

leaf() {  # name, extendedKeyUsage, subjectAltName (or "")
  local name="$1" usage="$2" san="$3"
  local ext
  ext="$(mktemp)"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    echo "extendedKeyUsage=$usage"
    if [[ -n "$san" ]]; then echo "subjectAltName=$san"; fi
  } > "$ext"
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -subj "/CN=$name" -keyout "$name-key.pem" -out "$name.csr" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca-key.pem -CAcreateserial \
    -days "$days" -extfile "$ext" -out "$name.pem" 2>/dev/null
  rm -f "$name.csr" "$ext"
}

leaf server serverAuth "DNS:nats-1,DNS:nats-2,DNS:nats-3,DNS:localhost,IP:127.0.0.1"
leaf client clientAuth ""
# Compose mounts secrets from files as they are, and the services run as uid 10001: the client
# key must be readable by them. Acceptable for a development CA only.
chmod 0644 ca.pem server.pem client.pem client-key.pem
chmod 0600 server-key.pem ca-key.pem
echo "wrote ca.pem, server.pem, server-key.pem, client.pem, client-key.pem to $dir"
