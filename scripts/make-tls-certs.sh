#!/usr/bin/env bash
# A private CA and the coordinator's server certificate, made with openssl (ECDSA P-256, 825
# days), for the compose TLS file, a test cluster, or a site without its own PKI yet:
#
#   bash scripts/make-tls-certs.sh DIR [DNS-NAME...]            # default names: coordinator localhost
#   bash scripts/make-tls-certs.sh --client worker DIR           # + worker.crt/worker.key (mutual TLS)
#
# writes into DIR: ca.crt (give it to workers and lthctl: LTH_TLS_CA), ca.key (keep it off every
# server), coordinator.crt and coordinator.key (the coordinator's --tls-cert / --tls-key), and with
# --client NAME a client certificate NAME.crt / NAME.key signed by the same CA (LTH_TLS_CLIENT_CERT /
# LTH_TLS_CLIENT_KEY; the coordinator's --tls-client-ca is then ca.crt). An existing ca.crt/ca.key
# in DIR is reused, so certificates made later are trusted by the same CA file.
# Kubernetes (components/tls): the names are lth-coordinator, lth-coordinator.lth.svc and
# lth-coordinator.lth.svc.cluster.local (deploy/README.md, "TLS").
set -euo pipefail
client=""
if [[ "${1:-}" == "--client" ]]; then
  client="${2:?--client needs a name}"
  shift 2
fi
dir="${1:?usage: make-tls-certs.sh [--client NAME] DIR [DNS-NAME...]}"
shift
names=("$@")
[[ ${#names[@]} -gt 0 ]] || names=(coordinator localhost)
mkdir -p "$dir"
cd "$dir"
umask 077

if [[ ! -f ca.crt || ! -f ca.key ]]; then
  openssl req -x509 -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout ca.key -out ca.crt \
    -days 825 -subj "/CN=lth private CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi

# sign NAME KIND(server|client) SAN: NAME.key and NAME.crt signed by the CA above.
sign() {
  local name="$1" kind="$2" san="$3" ext
  ext="$(mktemp)"
  {
    echo "basicConstraints=critical,CA:FALSE"
    echo "keyUsage=critical,digitalSignature"
    echo "extendedKeyUsage=${kind}Auth"
    echo "subjectAltName=$san"
  } > "$ext"
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$name.key" -out "$name.csr" -subj "/CN=$name" 2>/dev/null
  openssl x509 -req -in "$name.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -out "$name.crt" -days 825 -extfile "$ext" 2>/dev/null
  rm -f "$name.csr" "$ext"
}

san=""
for n in "${names[@]}"; do
  san="${san:+$san,}DNS:$n"
done
sign coordinator server "$san"
if [[ -n "$client" ]]; then
  sign "$client" client "DNS:$client"
fi
# Certificates are public; keys stay owner-only (chown them to the user that reads them:
# uid 10001 in the images).
chmod 0644 ca.crt coordinator.crt ${client:+"$client.crt"}
echo "make-tls-certs: $dir: ca.crt, coordinator.crt/.key for ${names[*]}${client:+, $client.crt/.key (client)}"
