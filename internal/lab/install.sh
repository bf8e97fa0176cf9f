#!/usr/bin/env bash
# install.sh builds the test servers once into a cache outside the checkout
# and reuses them when present. Usage: internal/lab/install.sh [DIR]
# DIR defaults to ${XDG_CACHE_HOME:-$HOME/.cache}/stackport-lab.
set -euo pipefail

LAB=${1:-${STACKPORT_LAB:-${XDG_CACHE_HOME:-$HOME/.cache}/stackport-lab}}
mkdir -p "$LAB/bin"
export GOBIN="$LAB/bin"
export GOFLAGS=-mod=mod

log() { printf 'lab: %s\n' "$*" >&2; }

have() { [ -x "$LAB/bin/$1" ] && [ -f "$LAB/bin/.$1.$2" ]; }
mark() { touch "$LAB/bin/.$1.$2"; }

# S3: versitygw
if ! have versitygw v1.8.0; then
  log "building versitygw v1.8.0"
  go install github.com/versity/versitygw/cmd/versitygw@v1.8.0
  mark versitygw v1.8.0
fi

# GCS: fake-gcs-server
if ! have fake-gcs-server v1.56.1; then
  log "building fake-gcs-server v1.56.1"
  go install github.com/fsouza/fake-gcs-server@v1.56.1
  mark fake-gcs-server v1.56.1
fi

# Helm, for the chart's lint and template tests.
if ! have helm v3.22.0; then
  log "building helm v3.22.0"
  go install helm.sh/helm/v3/cmd/helm@v3.22.0
  mark helm v3.22.0
fi

# Azure Blob: Azurite
if [ ! -x "$LAB/azurite/node_modules/.bin/azurite-blob" ] || [ ! -f "$LAB/azurite/.v3.37.0" ]; then
  log "installing azurite 3.37.0"
  mkdir -p "$LAB/azurite"
  (cd "$LAB/azurite" && npm install --no-audit --no-fund --loglevel=error azurite@3.37.0 >/dev/null)
  touch "$LAB/azurite/.v3.37.0"
fi
ln -sf "$LAB/azurite/node_modules/.bin/azurite-blob" "$LAB/bin/azurite-blob"

# MongoDB wire protocol: FerretDB (the module's go install panics; build from a copy)
if ! have ferretdb v1.24.2; then
  log "building ferretdb v1.24.2"
  dir=$(go mod download -json github.com/FerretDB/FerretDB@v1.24.2 | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  tmp=$(mktemp -d)
  cp -r "$dir" "$tmp/src"
  chmod -R u+w "$tmp/src"
  echo v1.24.2 > "$tmp/src/build/version/version.txt"
  (cd "$tmp/src" && go build -o "$LAB/bin/ferretdb" ./cmd/ferretdb)
  rm -rf "$tmp"
  mark ferretdb v1.24.2
fi

# Redis 7 and PostgreSQL 15 from Debian.
need_apt=()
command -v redis-server >/dev/null || need_apt+=(redis-server redis-tools)
[ -x /usr/lib/postgresql/15/bin/initdb ] || need_apt+=(postgresql-15 postgresql-client-15)
command -v zstd >/dev/null || need_apt+=(zstd)
[ -x /usr/bin/time ] || need_apt+=(time)
if [ ${#need_apt[@]} -gt 0 ]; then
  log "installing ${need_apt[*]}"
  if [ "$(id -u)" = 0 ]; then apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >/dev/null; fi
fi
log "ready in $LAB"
