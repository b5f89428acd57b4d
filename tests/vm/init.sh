#!/bin/sh
# /init of the wgtel VM test's initramfs (busybox sh): mounts the pseudo file systems, loads
# the kernel modules listed in /modules/order (dependencies first), runs /guest-test.sh and
# powers off. The host reads the verdict line, `WGTEL-VM: PASS` or `WGTEL-VM: FAIL reason`,
# from the serial console.
export PATH=/usr/sbin:/usr/bin:/sbin:/bin
# Debian's busybox runs its own applets before PATH: `ip` must be iproute2's.
ip() { /usr/sbin/ip "$@"; }
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null
mount -t bpf bpf /sys/fs/bpf 2>/dev/null
mount -t tmpfs tmpfs /run
mount -t tmpfs tmpfs /tmp
mkdir -p /run/netns /var/run
echo "wgtel-vm: kernel $(uname -r)"
while read -r module; do
    if ! insmod "/modules/$module"; then
        echo "WGTEL-VM: FAIL insmod $module"
        poweroff -f
    fi
done < /modules/order
ip link set lo up
sh /guest-test.sh
echo "wgtel-vm: guest test exited with $?"
sync
poweroff -f
