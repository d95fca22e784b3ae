#!/usr/bin/env bash
# Start Debian's mosquitto for the daemon tests: a plain listener and a TLS listener that
# requires a client certificate, both on free loopback ports, with a throwaway CA.
# Prints the environment the tests read (eval it) and leaves mosquitto running:
#   eval "$(bash tests/mosquitto.sh /tmp/mq)"; cargo test --test daemon mosquitto; kill $MAEDAY_MOSQUITTO_PID
set -euo pipefail
dir=${1:?usage: tests/mosquitto.sh DIR}
mkdir -p "$dir"
# mosquitto drops root privileges to its own user: it must be able to enter the folder.
chmod 0755 "$dir"
cd "$dir"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
plain=$(free_port)
tls=$(free_port)

# A CA, a server certificate for localhost/127.0.0.1, a client certificate (all v3, as
# rustls requires).
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=maeday test CA" \
  -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE \
  -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
for who in server client; do
  openssl req -newkey rsa:2048 -nodes -subj "/CN=$who" -keyout "$who.key" -out "$who.csr" 2>/dev/null
  if [ "$who" = server ]; then
    ext="subjectAltName=DNS:localhost,IP:127.0.0.1
extendedKeyUsage=serverAuth"
  else
    ext="extendedKeyUsage=clientAuth"
  fi
  printf '%s\nbasicConstraints=CA:FALSE\n' "$ext" > "$who.ext"
  openssl x509 -req -in "$who.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile "$who.ext" -out "$who.pem" 2>/dev/null
done
# mosquitto may drop root privileges to its own user: let it read the files.
chmod 0644 ./*.pem ./*.key

cat > mosquitto.conf <<CONF
per_listener_settings false
allow_anonymous true
persistence false
listener $plain 127.0.0.1
listener $tls 127.0.0.1
cafile $PWD/ca.pem
certfile $PWD/server.pem
keyfile $PWD/server.key
require_certificate true
CONF
bin=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$bin" -c mosquitto.conf > mosquitto.log 2>&1 &
pid=$!
for _ in $(seq 100); do
  if (exec 3<>"/dev/tcp/127.0.0.1/$plain") 2>/dev/null && (exec 3<>"/dev/tcp/127.0.0.1/$tls") 2>/dev/null; then
    break
  fi
  sleep 0.1
done
echo "export MAEDAY_MOSQUITTO_PID=$pid"
echo "export MAEDAY_TEST_MQTT_URL=mqtt://127.0.0.1:$plain"
echo "export MAEDAY_TEST_MQTTS_URL=mqtts://localhost:$tls"
echo "export MAEDAY_TEST_TLS_DIR=$PWD"
