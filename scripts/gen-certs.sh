#!/usr/bin/env bash
# Makes test certificates for length-echo: a CA, a server certificate and a client certificate (mutual TLS).
# Keys are mode 0600 and must never be committed (.gitignore keeps them out).
set -euo pipefail

usage() {
    cat <<'USAGE'
usage: scripts/gen-certs.sh [--out DIR] [--rsa] [--name DNS]... [--ip ADDR]... [--client-dns NAME]... [--client-uri URI]...
                           [--days N] [--force] [--expired]

Writes into DIR (default: certs/):
  ca.pem, ca.key          a test CA
  server.pem, server.key  a server certificate for localhost, 127.0.0.1 and ::1 (plus --name/--ip), signed by the CA
  client.pem, client.key  a client certificate for mutual TLS, signed by the CA

  --out DIR    write somewhere else
  --rsa        RSA 2048 keys instead of ECDSA P-256
  --name DNS   another DNS name for the server certificate (repeatable)
  --ip ADDR    another IP address for the server certificate (repeatable)
  --client-dns NAME  a DNS name in the client certificate's subjectAltName (repeatable; for --allow-dns)
  --client-uri URI   a URI in the client certificate's subjectAltName, e.g. spiffe://example.org/client (for --allow-uri)
  --revoke NAME      on certificates made before: revoke DIR/NAME.pem (client, server) in the CA's database and write
                     DIR/crl.pem (for the server's --client-crl); repeatable
  --crl              on certificates made before: (re)write DIR/crl.pem with what is revoked so far (none: an empty CRL)
  --days N     validity of the server and client certificates (default 825)
  --expired    make the server certificate one that expired in 2021 (to test clients)
  --force      overwrite existing files
USAGE
}

out="certs"
algorithm="ec"
days=825
force=0
expired=0
names=(localhost)
ips=(127.0.0.1 ::1)
client_sans=()
revoke=()
crl_only=0

while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="${2:?--out needs a folder}"; shift 2 ;;
        --rsa) algorithm="rsa"; shift ;;
        --name) names+=("${2:?--name needs a DNS name}"); shift 2 ;;
        --ip) ips+=("${2:?--ip needs an address}"); shift 2 ;;
        --client-dns) client_sans+=("DNS:${2:?--client-dns needs a DNS name}"); shift 2 ;;
        --client-uri) client_sans+=("URI:${2:?--client-uri needs a URI}"); shift 2 ;;
        --revoke) revoke+=("${2:?--revoke needs a name: client, or server}"); shift 2 ;;
        --crl) crl_only=1; shift ;;
        --days) days="${2:?--days needs a number}"; shift 2 ;;
        --force) force=1; shift ;;
        --expired) expired=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) echo "gen-certs.sh: unknown option $1" >&2; usage >&2; exit 2 ;;
    esac
done

command -v openssl >/dev/null || { echo "gen-certs.sh: needs the openssl command (apt-get install openssl)" >&2; exit 1; }

# --revoke NAME / --crl: on certificates made before, in --out. The CA keeps a database (openssl ca's, in
# $out/ca-db) of what it revoked; each run writes a CRL of all of it, valid 30 days, to $out/crl.pem.
if [ ${#revoke[@]} -gt 0 ] || [ "$crl_only" -eq 1 ]; then
    [ -f "$out/ca.pem" ] && [ -f "$out/ca.key" ] || { echo "gen-certs.sh: no CA in $out; make the certificates first" >&2; exit 1; }
    db="$out/ca-db"
    mkdir -p "$db"
    touch "$db/index.txt"
    [ -f "$db/crlnumber" ] || echo 1000 >"$db/crlnumber"
    cat >"$db/ca.cnf" <<CNF
[ca]
default_ca = length_echo
[length_echo]
database = $db/index.txt
crlnumber = $db/crlnumber
default_md = sha256
default_crl_days = 30
unique_subject = no
CNF
    for name in "${revoke[@]}"; do
        [ -f "$out/$name.pem" ] || { echo "gen-certs.sh: no certificate $out/$name.pem to revoke" >&2; exit 1; }
        openssl ca -batch -config "$db/ca.cnf" -cert "$out/ca.pem" -keyfile "$out/ca.key" -revoke "$out/$name.pem" 2>/dev/null \
            || { echo "gen-certs.sh: openssl ca could not revoke $out/$name.pem" >&2; exit 1; }
        echo "gen-certs.sh: revoked $out/$name.pem ($(openssl x509 -in "$out/$name.pem" -noout -serial))"
    done
    openssl ca -batch -config "$db/ca.cnf" -cert "$out/ca.pem" -keyfile "$out/ca.key" -gencrl -out "$out/crl.pem" 2>/dev/null \
        || { echo "gen-certs.sh: openssl ca could not write the CRL" >&2; exit 1; }
    openssl crl -in "$out/crl.pem" -CAfile "$out/ca.pem" -noout 2>/dev/null || { echo "gen-certs.sh: the CRL does not verify" >&2; exit 1; }
    echo "gen-certs.sh: wrote $out/crl.pem ($(grep -c '^R' "$db/index.txt") revoked); use it with:"
    echo "  swift run server --tls --cert $out/server.pem --key $out/server.key --client-ca $out/ca.pem --client-auth required --client-crl $out/crl.pem"
    exit 0
fi

files=(ca.pem ca.key server.pem server.key client.pem client.key)
for file in "${files[@]}"; do
    # A symlink (dangling or not) would be followed by every write: never, with --force neither.
    if [ -L "$out/$file" ]; then
        echo "gen-certs.sh: $out/$file is a symbolic link; remove it first" >&2
        exit 1
    fi
    if [ "$force" -eq 0 ] && [ -e "$out/$file" ]; then
        echo "gen-certs.sh: $out/$file exists; pass --force to overwrite" >&2
        exit 1
    fi
done
mkdir -p "$out"
work="$(mktemp -d)"
trap 'rm -rf "$work"; rm -f "$out"/.new-key.*' EXIT

# new_key PATH: a key written to a fresh 0600 file beside PATH, then renamed over it, so no other file (an
# old key's inode, with its old mode and other names) ever holds the new key.
new_key() {
    local fresh
    fresh="$(umask 077 && mktemp "$(dirname "$1")/.new-key.XXXXXX")"
    if [ "$algorithm" = "rsa" ]; then
        openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$fresh" 2>/dev/null
    else
        openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$fresh"
    fi
    mv -f "$fresh" "$1"
}

key_usage="digitalSignature"
[ "$algorithm" = "rsa" ] && key_usage="digitalSignature,keyEncipherment"

# The CA.
new_key "$out/ca.key"
openssl req -x509 -new -key "$out/ca.key" -sha256 -days 3650 -subj "/CN=length-echo test CA" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
    -out "$out/ca.pem"

# Signs $1.csr with the CA into $2, with the extensions in $3.
sign() {
    if [ "$expired" -eq 1 ] && [ "$2" = "$out/server.pem" ]; then
        mkdir -p "$work/ca"
        : > "$work/ca/index.txt"
        openssl rand -hex 16 > "$work/ca/serial"
        cat > "$work/ca/ca.cnf" <<CNF
[ca]
default_ca = test
[test]
database = $work/ca/index.txt
new_certs_dir = $work/ca
serial = $work/ca/serial
default_md = sha256
policy = any
unique_subject = no
[any]
commonName = supplied
CNF
        openssl ca -batch -notext -config "$work/ca/ca.cnf" -cert "$out/ca.pem" -keyfile "$out/ca.key" \
            -in "$1" -out "$2" -startdate 20200101000000Z -enddate 20210101000000Z -extfile "$3" 2>/dev/null
    else
        openssl x509 -req -in "$1" -CA "$out/ca.pem" -CAkey "$out/ca.key" -set_serial "0x$(openssl rand -hex 16)" \
            -days "$days" -sha256 -extfile "$3" -out "$2" 2>/dev/null
    fi
}

# issue NAME SUBJECT EXTENDED-KEY-USAGE [SUBJECT-ALT-NAMES]: a key and a certificate signed by the CA.
issue() {
    new_key "$out/$1.key"
    openssl req -new -key "$out/$1.key" -subj "$2" -out "$work/$1.csr"
    {
        echo "basicConstraints = critical,CA:FALSE"
        echo "keyUsage = critical,$key_usage"
        echo "extendedKeyUsage = $3"
        [ -z "${4:-}" ] || echo "subjectAltName = $4"
    } > "$work/$1.ext"
    sign "$work/$1.csr" "$out/$1.pem" "$work/$1.ext"
}

san=""
for name in "${names[@]}"; do san+="${san:+,}DNS:$name"; done
for ip in "${ips[@]}"; do san+="${san:+,}IP:$ip"; done
issue server "/CN=${names[0]}" serverAuth "$san"
client_san=""
for entry in "${client_sans[@]}"; do client_san+="${client_san:+,}$entry"; done
issue client "/CN=length-echo client" clientAuth "$client_san"
chmod 644 "$out/ca.pem" "$out/server.pem" "$out/client.pem"

# Check the result.
if [ "$expired" -eq 1 ]; then
    openssl verify -no_check_time -CAfile "$out/ca.pem" "$out/server.pem" >/dev/null
else
    openssl verify -CAfile "$out/ca.pem" "$out/server.pem" >/dev/null
fi
openssl verify -CAfile "$out/ca.pem" "$out/client.pem" >/dev/null

echo "gen-certs.sh: wrote $out/{ca,server,client}.{pem,key} ($algorithm; server certificate for ${san//,/, })"
echo "gen-certs.sh: all verified with openssl verify against $out/ca.pem"
echo
echo "Start a TLS server and talk to it:"
echo "  swift run server --tls --cert $out/server.pem --key $out/server.key"
echo "  swift run client --tls --ca $out/ca.pem --host localhost test_string"
echo "Mutual TLS:"
echo "  swift run server --tls --cert $out/server.pem --key $out/server.key --client-ca $out/ca.pem --client-auth required"
echo "  swift run client --tls --ca $out/ca.pem --cert $out/client.pem --key $out/client.key test_string"
