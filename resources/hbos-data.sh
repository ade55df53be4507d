#!/bin/sh
# HyperBEAM OS: put the node's state on the data disk (`doit start --data-disk`).
# Run by hbos-data.service before hyperbeam.service and cu.service.
#   hbos-data.sh DEVICE STATE_DIR...
# A blank DEVICE is formatted (ext4, label hbos-data) and mounted at
# /var/lib/hbos-data; for each STATE_DIR (e.g. /var/lib/hyperbeam; under
# /var/lib/private with systemd's DynamicUser) its basename's directory on the
# disk is bind-mounted on it. Without a data disk the state lives in the tmpfs
# overlay on /var and is lost when the VM stops.
set -eu
DEV="${1:?usage: hbos-data.sh DEVICE STATE_DIR...}"
shift
MNT=/var/lib/hbos-data
if [ ! -b "$DEV" ]; then
    echo "hbos-data: no data disk at $DEV: state lives in memory and is lost at stop"
    exit 0
fi
if ! blkid "$DEV" >/dev/null 2>&1; then
    echo "hbos-data: $DEV holds no filesystem: formatting it (ext4)"
    mkfs.ext4 -q -L hbos-data "$DEV"
fi
mkdir -p "$MNT"
mount -o nodev,nosuid "$DEV" "$MNT"
for dir in "$@"; do
    name=$(basename "$dir")
    mkdir -p "$MNT/$name" "$dir"
    mount --bind "$MNT/$name" "$dir"
done
echo "hbos-data: $DEV mounted at $MNT; $* live on it"
