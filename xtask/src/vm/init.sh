#!/bin/busybox sh
# /init of the `cargo xtask vm-test` guest (xtask/src/vm/init.sh, run by busybox sh as
# pid 1): mounts what egressd's kernel tests need, loads the kernel modules listed in
# /egressd-vm/modules.list, runs the command in /egressd-vm/argv (one argument per
# line) and prints its exit status as the marker line the host waits for, exactly once:
#   egressd-vm: exit=N
# then powers off. With `egressd_vm.probe` on the kernel command line it only prints
# `egressd-vm: probe ok` and powers off (the host's check whether KVM works).

# The host's tools (copied to the same paths) first; busybox applets for the rest.
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin:/busybox
export HOME=/root TMPDIR=/tmp TERM=dumb NO_COLOR=1 LANG=C.UTF-8
# The kernel tests wait this many times longer for what must happen (harness::patience):
# under TCG the guest is about 17 times slower, and two guests may share the host's CPUs.
export EGRESSD_TEST_PATIENCE=4
/bin/busybox mkdir -p /busybox
/bin/busybox --install -s /busybox

mount -t proc proc /proc
if grep -qw egressd_vm.probe /proc/cmdline; then
    echo "egressd-vm: probe ok"
    poweroff -f
fi
echo "egressd-vm: init $(uname -r)"

# mnt TYPE DIR: mount, creating DIR; a failure is reported and the run goes on (the test
# that needs the mount then says what is missing).
mnt() {
    mkdir -p "$2" && mount -t "$1" "$1" "$2" || echo "egressd-vm: warning: mount -t $1 $2 failed"
}
mnt sysfs /sys
mnt devtmpfs /dev
mnt devpts /dev/pts
mnt tmpfs /dev/shm
mnt tmpfs /run
mnt tmpfs /tmp
mnt cgroup2 /sys/fs/cgroup
mnt bpf /sys/fs/bpf
mnt securityfs /sys/kernel/security
mnt debugfs /sys/kernel/debug
ln -sfn /proc/self/fd /dev/fd
ln -sfn /proc/self/fd/0 /dev/stdin
ln -sfn /proc/self/fd/1 /dev/stdout
ln -sfn /proc/self/fd/2 /dev/stderr
mkdir -p /var && ln -sfn /run /var/run
hostname egressd-vm
ip link set lo up || echo "egressd-vm: warning: lo did not come up"

while IFS= read -r ko; do
    [ -n "$ko" ] || continue
    insmod "$ko" || echo "egressd-vm: warning: insmod $ko failed"
done < /egressd-vm/modules.list

set --
while IFS= read -r arg; do
    set -- "$@" "$arg"
done < /egressd-vm/argv
echo "egressd-vm: ready; running $*"
cd /tmp
"$@" < /dev/null
echo "egressd-vm: exit=$?"
sync
poweroff -f
