# SPDX-License-Identifier: Apache-2.0
# Certificates of the local cluster, sourced by hack/cluster.sh and hack/node.sh. One CA per cluster
# directory ($PKI/ca.{crt,key}); every other certificate is issued by it once and kept: a file that exists is
# never reissued, so components restarted against the same directory keep trusting each other.

# pki_ca: creates the CA in $PKI unless it exists.
pki_ca() {
  mkdir -p "$PKI"
  [ -f "$PKI/ca.crt" ] && [ -f "$PKI/ca.key" ] && return 0
  openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=loopsnap-local-ca" \
    -keyout "$PKI/ca.key" -out "$PKI/ca.crt" 2>/dev/null
  chmod 600 "$PKI/ca.key"
}

# pki_issue NAME SUBJECT EXTENSIONS: $PKI/NAME.{crt,key} signed by the CA, unless NAME.crt exists.
# EXTENSIONS is an openssl extfile body (subjectAltName=..., extendedKeyUsage=...).
pki_issue() {
  local name="$1" subject="$2" ext="$3"
  [ -f "$PKI/$name.crt" ] && [ -f "$PKI/$name.key" ] && return 0
  openssl req -newkey rsa:2048 -nodes -subj "$subject" -keyout "$PKI/$name.key" -out "$PKI/$name.csr" 2>/dev/null
  openssl x509 -req -in "$PKI/$name.csr" -CA "$PKI/ca.crt" -CAkey "$PKI/ca.key" -CAcreateserial -days 3650 \
    -extfile <(printf '%s\n' "$ext") -out "$PKI/$name.crt" 2>/dev/null
  rm -f "$PKI/$name.csr"
  chmod 600 "$PKI/$name.key"
}

# pki_kubeconfig FILE CERT-NAME SERVER: a kubeconfig authenticating with $PKI/CERT-NAME.{crt,key}.
pki_kubeconfig() {
  local file="$1" name="$2" server="$3" ca crt key
  ca="$(base64 -w0 < "$PKI/ca.crt")"; crt="$(base64 -w0 < "$PKI/$name.crt")"; key="$(base64 -w0 < "$PKI/$name.key")"
  (
    umask 077
    cat > "$file.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: loopsnap-local
  cluster:
    server: $server
    certificate-authority-data: $ca
users:
- name: $name
  user:
    client-certificate-data: $crt
    client-key-data: $key
contexts:
- name: loopsnap-local
  context:
    cluster: loopsnap-local
    user: $name
current-context: loopsnap-local
EOF
  )
  mv -f "$file.tmp" "$file"
}
