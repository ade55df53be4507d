#!/bin/sh
# HyperBEAM OS: put the node's state on the data disk (`doit start --data-disk`).
# Run by hbos-data.service before hyperbeam.service and cu.service.
#   hbos-data.sh DEVICE
# A blank DEVICE is formatted (ext4, label hbos-data); it is mounted at
# /var/lib/hbos-data and its hyperbeam/ and cu/ directories are bind-mounted
# on /var/lib/hyperbeam and /var/lib/cu. Without a data disk the state lives
# in the tmpfs overlay on /var and is lost when the VM stops.
set -eu
DEV="${1:?usage: hbos-data.sh DEVICE}"
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
for d in hyperbeam cu; do
    mkdir -p "$MNT/$d" "/var/lib/$d"
    mount --bind "$MNT/$d" "/var/lib/$d"
done
echo "hbos-data: $DEV mounted at $MNT; /var/lib/hyperbeam and /var/lib/cu live on it"
