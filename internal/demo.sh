#!/usr/bin/env bash
# demo.sh shows stackport's main jobs on this machine. First a sample
# Appsmith-like volume is snapshotted into a file:// repository, listed,
# verified, exported and restored, the restored tree is compared with the
# original, and a flipped byte is caught by verify. Then internal/demomigrate
# shows the migration: it starts lab servers on 127.0.0.1 (a FerretDB, a
# Redis and a PostgreSQL as the embedded databases; as targets a FerretDB, a
# Memorystore-like Redis and a PostgreSQL database of a role that is not a
# superuser), seeds a small Appsmith stack, runs `stackport migrate --plan`
# and `stackport migrate --profile appsmith`, prints the report and the new
# container's environment with its secrets masked, checks the targets, and
# stops every server (also on failure or Ctrl-C). The servers come from
# `make lab` (internal/lab/install.sh).
# Usage: internal/demo.sh path/to/stackport
set -euo pipefail
sp=$(realpath "${1:-bin/stackport}")
cd "$(dirname "$0")/.."
work=$(mktemp -d /tmp/stackport-demo.XXXXXX)
trap 'rm -rf "$work"' EXIT
stacks=$work/appsmith-stacks
export STACKPORT_REPO="file://$work/repo"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "a sample volume in $stacks"
mkdir -p "$stacks"/{configuration,git-storage/repo1,ssl,data/empty}
printf 'APPSMITH_ENCRYPTION_PASSWORD=demo\nAPPSMITH_ENCRYPTION_SALT=demo\n' > "$stacks/configuration/docker.env"
chmod 600 "$stacks/configuration/docker.env"
for i in $(seq 1 200); do echo "commit $i of a git-connected app" > "$stacks/git-storage/repo1/file$i.txt"; done
head -c 20M /dev/urandom > "$stacks/git-storage/repo1/blob.bin"
ln -s ../configuration/docker.env "$stacks/ssl/env-link"
ln "$stacks/git-storage/repo1/file1.txt" "$stacks/git-storage/hardlink.txt"
du -sh "$stacks"

step "stackport snapshot --volume $stacks"
id=$("$sp" snapshot --volume "$stacks" --tag demo=yes)
echo "snapshot ID: $id"

step "stackport list"
"$sp" list

step "stackport verify $id"
"$sp" verify "$id"

step "stackport export latest --component volume --out volume.tar"
"$sp" export latest --component volume --out "$work/volume.tar"
tar -tvf "$work/volume.tar" | sed -n 1,5p

step "stackport restore latest --volume-to $work/restored"
"$sp" restore latest --volume-to "$work/restored"

step "compare the original and the restored tree"
diff -r --no-dereference "$stacks" "$work/restored"
orig=$(cd "$stacks" && find . -printf '%p %m %U:%G %T@ %y %l\n' | sort | sha256sum)
back=$(cd "$work/restored" && find . -printf '%p %m %U:%G %T@ %y %l\n' | sort | sha256sum)
[ "$orig" = "$back" ] || { echo "metadata differs"; exit 1; }
echo "identical: content, modes, owners, mtimes, links"

step "a flipped byte is caught: verify exits 3"
obj=$(find "$work/repo/snapshots/$id" -name 'volume.tar.zst')
printf '\xff' | dd of="$obj" bs=1 seek=1000 conv=notrunc status=none
set +e; "$sp" verify "$id"; rc=$?; set -e
echo "exit code: $rc"
[ "$rc" = 3 ]

step "part two, migrate: internal/demomigrate"
${GO:-go} build -o "$work/demomigrate" ./internal/demomigrate
"$work/demomigrate" "$sp"
printf '\n\033[1mdemo passed\033[0m\n'
