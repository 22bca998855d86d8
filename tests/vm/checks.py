"""What every two-VM test checks, whatever joins the VMs.

:func:`check_pair` asserts that both guests hold leases in the expected
subnet, reach each other and the gateway, and returns the measured iperf3
rate (bit/s) from the first guest to the second. The rate is reported, never
asserted.
"""

from __future__ import annotations

import ipaddress
import json
import os
from pathlib import Path

from .qemu import Guest, iperf3_bits_per_second

RESULTS = Path(__file__).resolve().parent.parent / ".cache" / "e2e-iperf3.json"


def check_pair(a: Guest, b: Guest, gateway: str, prefix: str | None = None, iperf_seconds: int = 3,
               routers: tuple[str | None, ...] | None = None) -> float:
    """``routers``: the DHCP router options accepted (default: exactly ``gateway``)."""
    for g in (a, b):
        assert g.ip is not None, f"{g.name} has no lease"
        if prefix is not None:
            assert ipaddress.ip_address(g.ip) in ipaddress.ip_network(prefix), f"{g.name}: lease {g.ip} not in {prefix}"
    assert a.ip != b.ip, f"both guests got {a.ip}"
    accepted = routers if routers is not None else (gateway,)
    assert a.router in accepted and b.router in accepted, f"routers {a.router}, {b.router}; expected one of {accepted}"
    a.check(f"ping -c 2 -W 5 {b.ip}", timeout=60)
    b.check(f"ping -c 2 -W 5 {a.ip}", timeout=60)
    a.check(f"ping -c 2 -W 5 {gateway}", timeout=60)
    b.check(f"ping -c 2 -W 5 {gateway}", timeout=60)
    # The server runs in its own session, detached from the console.
    b.check("setsid iperf3 -s -1 </dev/null >/tmp/iperf3-server.log 2>&1 &", timeout=60)
    b.check("(i=0; until netstat -ltn | grep -q ':5201 '; do i=$((i+1)); [ $i -gt 100 ] && exit 1; sleep 0.2; done)",
            timeout=60)
    out = a.check(f"iperf3 -c {b.ip} -t {iperf_seconds} -f m", timeout=iperf_seconds + 120)
    return iperf3_bits_per_second(out)


def record_rate(label: str, bits_per_second: float) -> None:
    """Adds one measured rate to tests/.cache/e2e-iperf3.json (and prints it)."""
    print(f"iperf3 VM->VM {label}: {bits_per_second / 1e6:.0f} Mbit/s")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    data = {}
    if RESULTS.exists():
        try:
            data = json.loads(RESULTS.read_text())
        except ValueError:
            data = {}
    data[label] = round(bits_per_second / 1e6, 1)
    tmp = RESULTS.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, RESULTS)
