#!/usr/bin/env bash
# One-time setup for deployment/compose.yaml: a CA, the broker's and edgeinfer's
# certificates, a password for edgeinfer, and mosquitto's password file.
# Usage: deployment/setup.sh [BROKER_HOSTNAME]   (default: mosquitto, the compose service)
set -euo pipefail
cd "$(dirname "$0")"
host=${1:-mosquitto}
mkdir -p certs secrets
umask 077

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 3650 \
    -subj "/CN=edgeinfer-ca" -keyout certs/ca.key -out certs/ca.crt 2>/dev/null
issue() {  # name, CN, extensions
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
        -subj "/CN=$2" -keyout "certs/$1.key" -out "certs/$1.csr" 2>/dev/null
    openssl x509 -req -in "certs/$1.csr" -CA certs/ca.crt -CAkey certs/ca.key \
        -CAcreateserial -days 825 -out "certs/$1.crt" -extfile <(printf '%s' "$3") 2>/dev/null
    rm "certs/$1.csr"
}
issue server "$host" "subjectAltName=DNS:$host,DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
issue client edgeinfer "extendedKeyUsage=clientAuth"

password=$(openssl rand -base64 24)
printf '%s\n' "$password" > secrets/mqtt_password
if command -v mosquitto_passwd >/dev/null; then
    mosquitto_passwd -b -c mosquitto/passwd edgeinfer "$password"
else
    docker run --rm -v "$PWD/mosquitto:/work" eclipse-mosquitto:2.0 \
        mosquitto_passwd -b -c /work/passwd edgeinfer "$password"
fi
# The containers run as other users (mosquitto: 1883, edgeinfer: 10001) and mount
# these read-only: let them read, keep the CA key private.
chmod 644 certs/*.crt certs/server.key certs/client.key secrets/mqtt_password mosquitto/passwd
chmod 600 certs/ca.key
echo "written: certs/ (ca, server for '$host', client), secrets/mqtt_password, mosquitto/passwd"
