"""A tiny initramfs for test VMs, built at test time and cached.

The image holds busybox (static), iperf3 with its shared libraries and ELF
interpreter, and the virtio-net kernel modules of the host's cloud kernel.
Its ``/init`` loads the modules, brings up ``eth0``, asks for a DHCP lease
with ``udhcpc``, prints it on the serial console and then gives the test a
shell on the console (see :mod:`vm.qemu`).

The image is rebuilt only when one of its inputs changes: the cache key is a
hash of the input files' paths, sizes and mtimes and of this module's text.
It lives under ``tests/.cache/`` (gitignored).
"""

from __future__ import annotations

import glob
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

CACHE_DIR = Path(__file__).resolve().parent.parent / ".cache"

# The drivers the guest needs; their dependencies and load order come from
# the kernel's modules.dep (see module_load_order).
WANTED_MODULES = ["virtio_pci", "virtio_net"]

BUSYBOX = "/usr/bin/busybox"
IPERF3 = "/usr/bin/iperf3"

# The guest's /init. The markers (VMNET-*) are what the test reads on the
# serial console; keep them in step with vm/qemu.py.
INIT_SCRIPT = r"""#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/usr/bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mkdir -p /dev/pts /tmp /run /var/run
mount -t devpts devpts /dev/pts
echo 1 > /proc/sys/kernel/printk 2>/dev/null
for m in MODULES; do
  insmod "/lib/modules/$m" || echo "VMNET-ERROR insmod $m"
done
ip link set lo up
i=0
while [ ! -e /sys/class/net/eth0 ] && [ $i -lt 100 ]; do sleep 0.1; i=$((i+1)); done
ip link set eth0 up
echo "VMNET-MAC $(cat /sys/class/net/eth0/address)"
# vmnet_static=IP/MASK on the kernel command line: no DHCP (two VMs joined
# directly, with no server between them).
static=$(sed -n 's/.*vmnet_static=\([^ ]*\).*/\1/p' /proc/cmdline)
if [ -n "$static" ]; then
  ip addr add "$static" dev eth0
  echo "VMNET-LEASE $static "
elif udhcpc -i eth0 -n -q -t 30 -T 3 -s /etc/udhcpc.script; then
  echo "VMNET-LEASE $(cat /run/lease)"
else
  echo "VMNET-NOLEASE"
fi
echo "VMNET-READY"
# PID 1 must never exit (the kernel would panic): the test's shell runs as a
# child, restarted if it ends.
while true; do
  setsid cttyhack sh -c 'stty -echo; set +m; PS1= exec sh +m'
  echo "VMNET-SHELL-EXITED"
done
"""

UDHCPC_SCRIPT = r"""#!/bin/sh
# udhcpc hook: applies the lease and records it as "ip/mask router";
# the DNS server goes to /etc/resolv.conf.
case "$1" in
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      ip route replace default via ${router%% *} dev "$interface"
    fi
    echo "$ip/${mask:-24} ${router%% *}" > /run/lease
    # The network's DNS server, so names resolve (ping NAME, nslookup NAME).
    if [ -n "$dns" ]; then
      echo "nameserver ${dns%% *}" > /etc/resolv.conf
    fi
    ;;
  deconfig)
    ip addr flush dev "$interface"
    ;;
esac
exit 0
"""


def kernel_path() -> Path:
    """The host's cloud kernel image, the one whose modules go in the image."""
    found = sorted(glob.glob("/boot/vmlinuz-*-cloud-amd64"))
    if not found:
        raise FileNotFoundError("no /boot/vmlinuz-*-cloud-amd64: run scripts/install-deps (linux-image-cloud-amd64)")
    return Path(found[-1])


def modules_dir(kernel: Path) -> Path:
    version = kernel.name[len("vmlinuz-"):]
    return Path("/lib/modules") / version


def _shared_libs(binary: str) -> list[str]:
    """The shared libraries and ELF interpreter ``binary`` loads, per ldd."""
    out = subprocess.run(["ldd", binary], capture_output=True, text=True, check=True).stdout
    libs = []
    for line in out.splitlines():
        m = re.search(r"(/\S+)\s+\(0x", line)
        if m:
            libs.append(m.group(1))
    return libs


def module_load_order(mdir: Path, wanted: list[str] = WANTED_MODULES) -> list[Path]:
    """The module files for ``wanted`` and their dependencies, dependencies first.

    Reads ``modules.dep``; handles compressed modules (``.ko.xz`` etc.).
    """
    deps: dict[str, list[str]] = {}
    by_name: dict[str, str] = {}
    for line in (mdir / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        deps[path] = rest.split()
        by_name[re.sub(r"\.ko(\.\w+)?$", "", Path(path).name)] = path
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for dep in deps.get(path, []):
            visit(dep)
        order.append(path)

    for name in wanted:
        if name not in by_name:
            raise FileNotFoundError(f"kernel module {name} not in {mdir}/modules.dep (built in? then drop it)")
        visit(by_name[name])
    return [mdir / p for p in order]


def _decompress_module(src: Path, dst: Path) -> None:
    if src.suffix == ".ko":  # stored uncompressed
        shutil.copy2(src, dst)
        return
    tool = {".xz": ["xz", "-dc"], ".zst": ["zstd", "-dc"], ".gz": ["gzip", "-dc"]}[src.suffix]
    with open(dst, "wb") as out:
        subprocess.run([*tool, str(src)], stdout=out, check=True)


def _inputs(kernel: Path) -> list[Path]:
    mdir = modules_dir(kernel)
    paths = [Path(BUSYBOX), Path(IPERF3), kernel]
    paths += [Path(p) for p in _shared_libs(IPERF3)]
    paths += module_load_order(mdir)
    return paths


def _cache_key(kernel: Path) -> str:
    h = hashlib.sha256()
    for p in _inputs(kernel):
        st = p.stat()
        h.update(f"{p}:{st.st_size}:{st.st_mtime_ns}\n".encode())
    h.update(Path(__file__).read_bytes())
    return h.hexdigest()[:16]


def build_initramfs(kernel: Path | None = None) -> Path:
    """The path of the cached initramfs for ``kernel``, building it if needed."""
    kernel = kernel or kernel_path()
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    target = CACHE_DIR / f"initramfs-{_cache_key(kernel)}.cpio"
    if target.exists():
        return target
    mdir = modules_dir(kernel)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR) as tmp:
        root = Path(tmp) / "root"
        for d in ("bin", "dev", "proc", "sys", "etc", "run", "tmp", "lib/modules", "usr/bin"):
            (root / d).mkdir(parents=True, exist_ok=True)
        shutil.copy2(BUSYBOX, root / "bin/busybox")
        shutil.copy2(IPERF3, root / "usr/bin/iperf3")
        for lib in _shared_libs(IPERF3):
            dst = root / lib.lstrip("/")
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(os.path.realpath(lib), dst)
        names = []
        for src in module_load_order(mdir):
            name = re.sub(r"\.ko(\.\w+)?$", ".ko", src.name)
            _decompress_module(src, root / "lib/modules" / name)
            names.append(name)
        init = root / "init"
        init.write_text(INIT_SCRIPT.replace("MODULES", " ".join(names)))
        init.chmod(0o755)
        script = root / "etc/udhcpc.script"
        script.write_text(UDHCPC_SCRIPT)
        script.chmod(0o755)
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, text=True, check=True).stdout
        partial = Path(tmp) / "image.cpio"
        with open(partial, "wb") as out:
            subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files.encode(),
                           stdout=out, check=True)
        os.replace(partial, target)
    return target
