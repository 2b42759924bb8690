#!/usr/bin/env bash
# Test PKI, made fresh for each run: a CA, a server certificate for 127.0.0.1 / localhost, a
# client certificate, and a second CA that trusts none of them. EC P-256 keys, one day.
set -euo pipefail
dir=$1
mkdir -p "$dir"
cd "$dir"
key() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
ca() {
  key "$1.key"
  openssl req -x509 -new -key "$1.key" -out "$1.pem" -days 1 -subj "/CN=$1" 2>/dev/null
}
leaf() {  # name ca extensions
  key "$1.key"
  openssl req -new -key "$1.key" -out "$1.csr" -subj "/CN=$1" 2>/dev/null
  printf '%s\n' "$3" > "$1.ext"
  openssl x509 -req -in "$1.csr" -CA "$2.pem" -CAkey "$2.key" -CAcreateserial -days 1 \
    -extfile "$1.ext" -out "$1.pem" 2>/dev/null
}
ca ca
ca other-ca
leaf server ca "subjectAltName=IP:127.0.0.1,DNS:localhost"
leaf client ca "extendedKeyUsage=clientAuth"
printf '# tokens vbd accepts\nsecret-token-for-tests\n' > tokens
printf 'secret-token-for-tests\n' > good-token
leaf wronghost ca "subjectAltName=DNS:wrong.example"
