#!/usr/bin/env bash
# Makes a test CA and certificates for a local raftnode cluster with openssl.
#
#   bin/certs.sh DIR [N]      N nodes (default 3)
#
# Writes, in DIR:
#   ca.pem, ca.key                the CA (EC P-256, self-signed)
#   node-<id>.pem, node-<id>.key  for ids 1..N: DNS names node-<id> and
#                                 localhost, IP 127.0.0.1; usable for both
#                                 --peer-cert-file and --cert-file
#   client.pem, client.key        a client certificate (DNS name client)
#
# A node's identity is its DNS name node-<id>: peers check it on every
# connection, so a certificate for node 3 cannot speak as node 2. For a real
# cluster, issue certificates from your own CA with the same names; keep
# ca.key off the nodes. Environment: DAYS (validity, default 365).
set -euo pipefail
dir=${1:?usage: bin/certs.sh DIR [N]}
n=${2:-3}
days=${DAYS:-365}
command -v openssl >/dev/null || { echo "certs.sh: needs openssl (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
cd "$dir"

newkey() {
  openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null
  chmod 600 "$1"
}

newkey ca.key
openssl req -new -x509 -key ca.key -out ca.pem -days "$days" -sha256 \
  -subj "/CN=raftnode test CA" \
  -addext "basicConstraints=critical,CA:TRUE" \
  -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -addext "subjectKeyIdentifier=hash"

# sign NAME SUBJECT_ALT_NAMES EXTENDED_KEY_USAGE
sign() {
  local name=$1 san=$2 eku=$3
  newkey "$name.key"
  openssl req -new -key "$name.key" -out "$name.csr" -subj "/CN=$name"
  # Without -extfile, openssl writes an X.509 v1 certificate, which rustls refuses.
  cat > "$name.ext" <<EXT
basicConstraints=critical,CA:FALSE
keyUsage=critical,digitalSignature
extendedKeyUsage=$eku
subjectAltName=$san
subjectKeyIdentifier=hash
authorityKeyIdentifier=keyid
EXT
  openssl x509 -req -in "$name.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
    -out "$name.pem" -days "$days" -sha256 -extfile "$name.ext" 2>/dev/null
  rm -f "$name.csr" "$name.ext"
}

for id in $(seq 1 "$n"); do
  sign "node-$id" "DNS:node-$id,DNS:localhost,IP:127.0.0.1" "serverAuth,clientAuth"
done
sign client "DNS:client" "clientAuth"
rm -f ca.srl
echo "certs.sh: wrote a CA, $n node certificates and a client certificate to $dir"
