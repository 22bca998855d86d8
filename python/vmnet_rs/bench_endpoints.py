"""``vmnet-rs bench``: the endpoint paths (docs/endpoints.md) on the real
Linux network, beside a direct socket link of the same kind.

A broker runs in a network namespace of its own (its bridge, TAPs and
nftables rules live there; no DHCP, no DNS) with its endpoint sockets in a
temporary directory. Clients are plain AF_UNIX sockets made inside the
benchmark's namespace (so its ``net.unix.max_dgram_qlen`` applies to them as
to the broker's sockets), playing the VMs; the native generators and sinks
of ``_native.bench_flows`` send and count frames through them:

* ``endpoint_datagram`` / ``endpoint_stream``: ``generator -> client socket
  -> endpoint -> port relay -> TAP -> bridge -> TAP -> port relay ->
  endpoint -> client socket -> sink``;
* ``direct_datagram`` / ``direct_stream``: a socketpair of the same type,
  generator at one end and sink at the other: the limit of the socket kind
  (QEMU joined directly to QEMU, in the VM-to-VM benchmark).

CPU per frame counts the benchmark process (generators, sinks) and the
broker process (the relays and the endpoint) over the run. Loss is frames
sent minus frames received; beside it are the drops the broker's ``status``
shows for the ports (``drops`` of the relays and the endpoint, and
``queue_drops``: what the TAPs' own queues dropped), so a loss nobody
counted shows as ``uncounted``.

The slow-reader case: two receiving clients, one of which stops reading
while frames keep coming for it (a burst that fills its queue, then a
trickle); the rate of a flow to the other is measured alone and then
beside it, in each round.

``bench.py`` runs the rounds (each round every case of each size back to
back with the fd relay cases they are compared with, then the slow-reader
case); ``endpoint_summary`` takes each ratio per round and reports the
median (``bench_rounds``).
"""

from __future__ import annotations

import ctypes
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from . import _native
from .bench_rounds import paired_ratio, rounds_of

ENDPOINT_PATHS = ["direct_datagram", "endpoint_datagram", "direct_stream", "endpoint_stream"]
KIND_OF = {"direct_datagram": "datagram", "endpoint_datagram": "datagram", "direct_stream": "stream", "endpoint_stream": "stream"}
NETWORK = "bench"
SUBNET = "10.233.0.1/24"
#: EtherType of the frames made here (hello frames that teach the bridge a
#: client's MAC, frames for the client that stopped reading): IEEE local
#: experimental 2, which the native sinks do not count (theirs is 0x88B5).
OTHER_ETHERTYPE = b"\x88\xb6"
CLONE_NEWNET = 0x40000000
#: Frames sent at once to the client that stopped reading, then per second.
SLOW_BURST = 2048
SLOW_TRICKLE_PER_S = 1000


def _mac(n: int) -> str:
    # Fresh clients every case and round: two bytes of count.
    return f"02:00:00:e0:{(n >> 8) & 0xff:02x}:{n & 0xff:02x}"


def _mac_bytes(mac: str) -> bytes:
    return bytes.fromhex(mac.replace(":", ""))


def _frame(dst: str, src: str, size: int) -> bytes:
    return (_mac_bytes(dst) + _mac_bytes(src) + OTHER_ETHERTYPE).ljust(size, b"\0")


def _in_netns(netns: str, make: Callable[[], Any]) -> Any:
    """Runs ``make`` on a thread that first joins network namespace
    ``netns`` (sockets made there take its unix settings); the thread, and
    its namespace with it, ends afterwards."""
    libc = ctypes.CDLL(None, use_errno=True)
    out: Dict[str, Any] = {}

    def run() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY | os.O_CLOEXEC)
            try:
                if libc.setns(fd, CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), f"setns into {netns}")
            finally:
                os.close(fd)
            out["value"] = make()
        except BaseException as e:  # handed to the caller
            out["error"] = e

    t = threading.Thread(target=run, name="bench-netns")
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def _proc_cpu(pid: int) -> float:
    """CPU seconds (user + system) of process ``pid`` and its threads."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class EndpointBroker:
    """A broker in namespace ``ns`` serving network ``bench``'s endpoints."""

    def __init__(self, ns: Any, error: Callable[[str], Exception]) -> None:
        self.ns = ns
        self.dir = Path(tempfile.mkdtemp(prefix="vmnet-rs-bench-ep-"))
        self.ep = self.dir / "ep"
        self.socket = str(self.dir / "broker.sock")
        cfg = self.dir / "networks.yaml"
        cfg.write_text(json.dumps({
            "broker": {"allowedUsers": ["root"], "allowedGroups": [], "endpointDir": str(self.ep)},
            "vmnet": {NETWORK: {"mode": "host", "subnet": SUBNET, "dhcp": False, "dnsProxy": False}},
        }))
        self.log = open(self.dir / "broker.log", "w")
        argv = [sys.executable, "-m", "vmnet_rs", "broker", "--socket", self.socket, "--config", str(cfg),
                "--state-dir", str(self.dir / "state"), "--idle-timeout", "0", "--monitor-interval", "0.2"]
        # `ip netns exec` execs the broker: the pid is the broker's.
        self.proc = subprocess.Popen(["ip", "netns", "exec", ns.name, *argv], stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 60
        while not self._answers():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.close()
                raise error(f"the benchmark's broker did not start: {(self.dir / 'broker.log').read_text()[-2000:]}")
            time.sleep(0.05)

    def _answers(self) -> bool:
        from .broker import Client
        from .errors import VmnetError

        if not os.path.exists(self.socket):
            return False
        try:
            with Client(self.socket, timeout=5) as c:
                return bool(c.ping())
        except VmnetError:
            return False

    def status(self) -> Dict[str, Any]:
        from .broker import Client

        with Client(self.socket, timeout=30) as c:
            return c.status()

    def ports(self) -> Dict[str, Any]:
        return self.status().get("endpoints", {}).get(NETWORK, {}).get("ports", {})

    def cpu(self) -> float:
        return _proc_cpu(self.proc.pid)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def _drops(ports: Dict[str, Any], leases: List[str]) -> Dict[str, int]:
    """The drops ``status`` shows for these ports, by where they happened."""
    out = {"relay_and_endpoint": 0, "tap_queue": 0}
    for lid in leases:
        p = ports.get(lid)
        if p is None:
            continue
        for d in ("host_to_vm", "vm_to_host"):
            out["relay_and_endpoint"] += p[d]["drops"]
            out["tap_queue"] += p[d].get("queue_drops", 0)
    return out


class EndpointBench:
    """The endpoint cases of one ``vmnet-rs bench`` run."""

    def __init__(self, ns: Any, seconds: float, error: Callable[[str], Exception], log: Callable[[str], None]) -> None:
        self.ns = ns
        self.seconds = seconds
        self.error = error
        self.log = log
        self.broker = EndpointBroker(ns, error)
        self.clients = Path(tempfile.mkdtemp(prefix="vmnet-rs-bench-cl-"))
        self.next_mac = 1

    def close(self) -> None:
        self.broker.close()
        shutil.rmtree(self.clients, ignore_errors=True)

    # --- clients ------------------------------------------------------------------

    def _client(self, kind: str, stack: ExitStack) -> Tuple[socket.socket, str]:
        """A client socket connected to the endpoint of ``kind``, made in the
        namespace, with a fresh MAC that the bridge has learnt."""
        mac = _mac(self.next_mac)
        self.next_mac += 1
        path = str(self.clients / f"c{self.next_mac}.sock")

        def make() -> socket.socket:
            if kind == "stream":
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.connect(str(self.broker.ep / f"{NETWORK}.stream.sock"))
            else:
                s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                s.bind(path)
                s.connect(str(self.broker.ep / f"{NETWORK}.dgram.sock"))
            return s

        s = _in_netns(self.ns.name, make)
        stack.callback(lambda: os.path.exists(path) and os.unlink(path))
        stack.callback(s.close)
        hello = _frame("ff:ff:ff:ff:ff:ff", mac, 64)
        if kind == "stream":
            s.sendall(len(hello).to_bytes(4, "big") + hello)
        else:
            s.send(hello)
        return s, mac

    def _wait_ports(self, macs: List[str]) -> List[str]:
        """The leases of the ports whose VM MACs are ``macs`` (in order), once all are seen."""
        deadline = time.monotonic() + 30
        while True:
            ports = self.broker.ports()
            by_mac = {p.get("mac"): lid for lid, p in ports.items()}
            if all(m in by_mac for m in macs):
                return [by_mac[m] for m in macs]
            if time.monotonic() > deadline:
                raise self.error(f"the broker made no port for {', '.join(m for m in macs if m not in by_mac)} in 30 s")
            time.sleep(0.05)

    # --- cases ----------------------------------------------------------------------

    def _measure(self, path: str, size: int, flows: List[Tuple[int, str, int, str, str, str]], leases: List[str],
                 seconds: Optional[float] = None) -> Dict[str, Any]:
        before = _drops(self.broker.ports(), leases) if leases else {"relay_and_endpoint": 0, "tap_queue": 0}
        cpu0 = self.broker.cpu() if leases else 0.0
        r = _native.bench_flows(flows, size, seconds or self.seconds)
        broker_cpu = self.broker.cpu() - cpu0 if leases else 0.0
        after = _drops(self.broker.ports(), leases) if leases else before
        fl = r["flows"]
        window = r["window_s"]
        sent, received = sum(f["sent"] for f in fl), sum(f["received"] for f in fl)
        in_window = sum(f["received_in_window"] for f in fl)
        gen_cpu, sink_cpu = sum(f["generator_cpu_s"] for f in fl), sum(f["sink_cpu_s"] for f in fl)
        counted = {k: after[k] - before[k] for k in after}
        lost = sent - received
        # In-process relays do not exist here: the relay is the broker.
        relay_cpu = broker_cpu
        cpu = r["process_cpu_s"] + broker_cpu
        return {
            "path": path,
            "frame_bytes": size,
            "pairs": len(flows),
            "window_s": round(window, 3),
            "frames_per_s": round(in_window / window),
            "gbit_per_s": round(sum(f["bytes_in_window"] for f in fl) * 8 / window / 1e9, 3),
            "sent": sent,
            "received": received,
            "loss": round(lost / sent, 4) if sent else None,
            "lost": lost,
            "counted_drops": counted,
            "uncounted": max(0, lost - sum(counted.values())),
            "reordered": sum(f["reordered"] for f in fl),
            "cpu_s": round(cpu, 3),
            "broker_cpu_s": round(broker_cpu, 3),
            "generator_cpu_s": round(gen_cpu, 3),
            "sink_cpu_s": round(sink_cpu, 3),
            "relay_cpu_s": round(relay_cpu, 3),
            # Broker CPU covers the whole run (window and drain): per frame received.
            "cpu_us_per_frame": round(cpu / received * 1e6, 2) if received else None,
            "relay_cpu_us_per_frame": round(relay_cpu / received * 1e6, 2) if received else None,
        }

    def case(self, path: str, size: int) -> Dict[str, Any]:
        kind = KIND_OF[path]
        framing = "stream" if kind == "stream" else "datagram"
        with ExitStack() as stack:
            if path.startswith("direct_"):
                def pair() -> Tuple[socket.socket, socket.socket]:
                    return socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM if kind == "stream" else socket.SOCK_DGRAM)

                a, b = _in_netns(self.ns.name, pair)
                stack.callback(a.close)
                stack.callback(b.close)
                ma, mb = _mac(0xf0), _mac(0xf1)
                return self._measure(path, size, [(a.fileno(), framing, b.fileno(), framing, ma, mb)], [])
            (a, ma), (b, mb) = self._client(kind, stack), self._client(kind, stack)
            leases = self._wait_ports([ma, mb])
            return self._measure(path, size, [(a.fileno(), framing, b.fileno(), framing, ma, mb)], leases)

    def slow_reader(self, kind: str, size: int) -> Dict[str, Any]:
        """One round of the slow-reader case: a flow to a fast reader,
        alone and then beside a client that stopped reading while frames
        keep coming for it, and the ratio of the two rates."""
        path = f"endpoint_{kind}"
        framing = "stream" if kind == "stream" else "datagram"
        with ExitStack() as stack:
            (a, ma), (b, mb) = self._client(kind, stack), self._client(kind, stack)
            leases = self._wait_ports([ma, mb])
            alone = self._measure(path, size, [(a.fileno(), framing, b.fileno(), framing, ma, mb)], leases)
        # A run's generator may stop inside a stream frame: fresh clients.
        with ExitStack() as stack:
            (a, ma), (b, mb) = self._client(kind, stack), self._client(kind, stack)
            leases = self._wait_ports([ma, mb])
            (s, ms), (stopped, mstopped) = self._client(kind, stack), self._client(kind, stack)
            leases += self._wait_ports([ms, mstopped])
            stop = threading.Event()
            feeder_sent = [0]
            frame = _frame(mstopped, ms, size)
            wire = len(frame).to_bytes(4, "big") + frame if kind == "stream" else frame
            # A datagram goes whole or not at all; a stream write must not be
            # cut (its relay reads on into the TAP, so it never waits long).
            s.setblocking(kind == "stream")

            def send() -> bool:
                try:
                    s.sendall(wire) if kind == "stream" else s.send(wire)
                except BlockingIOError:
                    return False
                feeder_sent[0] += 1
                return True

            def feed() -> None:
                # A burst that fills the stopped client's queue, then a trickle.
                for _ in range(SLOW_BURST):
                    if not send():
                        break
                while not stop.wait(1 / SLOW_TRICKLE_PER_S):
                    send()

            t = threading.Thread(target=feed, name="bench-slow-feeder")
            t.start()
            try:
                # Let the burst reach the stopped client's queue first.
                time.sleep(0.5)
                beside = self._measure(path, size, [(a.fileno(), framing, b.fileno(), framing, ma, mb)], leases)
            finally:
                stop.set()
                t.join()
            stuck = self.broker.ports().get(leases[3], {})
        return {
            "kind": kind,
            "frame_bytes": size,
            "alone": alone,
            "beside_stopped_reader": beside,
            "stopped_reader": {"frames_sent_to_it": feeder_sent[0], "host_to_vm": stuck.get("host_to_vm")},
            "ratio": round(beside["frames_per_s"] / alone["frames_per_s"], 3) if alone["frames_per_s"] else None,
        }


@contextmanager
def endpoint_bench(make_ns: Callable[[str], Any], seconds: float, error: Callable[[str], Exception],
                   log: Callable[[str], None]) -> Iterator[EndpointBench]:
    """A namespace of its own with a broker serving the endpoints, for the
    rounds of one run; both are gone afterwards."""
    ns = make_ns("ep")
    bench: Optional[EndpointBench] = None
    try:
        bench = EndpointBench(ns, seconds, error, log)
        yield bench
    finally:
        if bench is not None:
            bench.close()
        ns.close()


def _find(cases: List[Dict[str, Any]], path: str, size: int) -> Dict[str, Any]:
    return next((c for c in cases if c["path"] == path and c["frame_bytes"] == size), {})


def endpoint_summary(endpoint: Dict[str, Any], adaptor_cases: List[Dict[str, Any]], sizes: List[int]) -> Dict[str, Any]:
    """Per endpoint kind and size: frames/s against the direct link, frames/s
    and relay CPU per frame against the fd relays of the same kind
    (``datagram`` and ``datagram_next``; ``stream``), all from the same run.

    Each ratio is taken per round (the two cases of a round ran back to
    back) and reported as the median of those, with the per-round values
    under the same name + ``_rounds``. Loss is the total over the rounds
    (lost over sent) and ``uncounted`` their sum."""
    fd_kinds = {"datagram": ["datagram", "datagram_next"], "stream": ["stream"]}
    out: Dict[str, Any] = {}
    for kind in ("datagram", "stream"):
        e: Dict[str, Any] = {}

        def put(x: Dict[str, Any], name: str, r: Tuple[Optional[float], List[Optional[float]]]) -> None:
            x[name], x[name + "_rounds"] = r

        for size in sizes:
            ep, direct = _find(endpoint["cases"], f"endpoint_{kind}", size), _find(endpoint["cases"], f"direct_{kind}", size)
            if not ep:
                continue
            x: Dict[str, Any] = {"rounds": len(rounds_of(ep))}
            put(x, "frames_per_s_vs_direct", paired_ratio(ep, direct, "frames_per_s"))
            for fd_kind in fd_kinds[kind]:
                fd = next((c for c in adaptor_cases if c["path"] == fd_kind and c["frame_bytes"] == size and c["pairs"] == 1), {})
                put(x, f"frames_per_s_vs_{fd_kind}", paired_ratio(ep, fd, "frames_per_s"))
                put(x, f"relay_cpu_per_frame_vs_{fd_kind}", paired_ratio(ep, fd, "relay_cpu_us_per_frame"))
            x["loss"] = ep.get("loss")
            x["uncounted"] = ep.get("uncounted")
            e[str(size)] = x
        slow = next((s for s in endpoint.get("slow_reader", []) if s["kind"] == kind), None)
        if slow is not None:
            e["slow_reader_ratio"] = slow["ratio"]
            e["slow_reader_ratio_rounds"] = slow.get("ratio_rounds", [slow["ratio"]])
        if e:
            out[kind] = e
    return out
