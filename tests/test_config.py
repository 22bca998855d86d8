"""Configuration loading: defaults, Lima's file, round trips, every error's exact message."""

from __future__ import annotations

import dataclasses
import json
import textwrap
from pathlib import Path
from typing import List

import pytest
import yaml

from vmnet_rs import ConfigError, _native
from vmnet_rs import config as cfgmod
from vmnet_rs.config import (
    BrokerSettings,
    Config,
    DhcpReservation,
    NetworkConfig,
    PortForward,
    load_config,
    load_config_text,
)

DATA = Path(__file__).parent / "data"

ALL_NETWORK_KEYS = (
    "mode, dhcp, dnsProxy, mtu, nat44, nat66, routerAdvertisement, subnet, ipv6Prefix, "
    "portForwarding, dhcpReservations, addresses, externalInterface, domain, isolation, offload, endpoints, allowedUsers, allowedGroups"
)


def problems(text: str, source: str = "networks.yaml") -> List[str]:
    """The problems loading YAML text reports, one per line."""
    with pytest.raises(ConfigError) as info:
        load_config_text(textwrap.dedent(text), source)
    return str(info.value).splitlines()


def net(**changes: object) -> NetworkConfig:
    """Lima's defaults for a shared network (as the validator fills them), with changes."""
    return dataclasses.replace(NetworkConfig.lima_default(), **changes)  # type: ignore[arg-type]


def one(text: str) -> str:
    p = problems(text)
    assert len(p) == 1, p
    return p[0]


# --- defaults and Lima's file --------------------------------------------------------------


def test_builtin_defaults() -> None:
    cfg = Config.defaults()
    assert sorted(cfg.networks) == ["host", "shared"]
    assert cfg.networks["shared"] == net(subnet="192.168.107.1/24")
    assert cfg.networks["host"] == net(mode="host", router_advertisement=False, subnet="192.168.108.1/24")
    assert cfg.networks["host"] == dataclasses.replace(NetworkConfig.lima_default("host"), subnet="192.168.108.1/24")
    assert cfg.broker == BrokerSettings.default()
    assert cfg.broker.idle_timeout == 120
    assert cfg.broker.allowed_users == ("root",)
    assert cfg.broker.allowed_groups == ("vmnet-rs",)
    assert cfg.broker.socket == "/run/vmnet-rs/broker.sock"
    assert cfg.broker.mach_service == "io.github.vmnet-rs.broker"
    assert cfg.source is None


def test_empty_file_is_the_defaults() -> None:
    assert load_config_text("", "empty.yaml").to_json() == Config.defaults().to_json()
    assert load_config_text("vmnet:\n", "empty.yaml").to_json() == Config.defaults().to_json()


def test_lima_networks_yaml_gives_limas_values() -> None:
    cfg = load_config(DATA / "lima-networks.yaml")
    lima = dict(mode="shared", dhcp=True, dns_proxy=True, mtu=1500, nat44=True, nat66=True, router_advertisement=True)
    # What Lima derives: the subnet normalised to its first host, absent keys at Lima's defaults.
    assert cfg.networks["shared"] == net(**{**lima, "subnet": "192.168.107.1/24"})
    assert cfg.networks["host"] == net(
        **{**lima, "mode": "host", "router_advertisement": False, "subnet": "192.168.108.1/24"}
    )
    assert cfg.networks["lab-host"] == net(
        **{**lima, "mode": "host", "router_advertisement": False, "subnet": "192.168.110.1/24"}
    )
    assert cfg.networks["scratch"] == net(**lima)
    assert cfg.networks["scratch"].subnet is None
    assert cfg.networks["jumbo"] == net(**{**lima, "nat66": False, "subnet": "192.168.109.1/24"})
    # Lima's socket_vmnet "networks" (bridged, user-v2, ...) are not vmnet-rs networks.
    assert sorted(cfg.networks) == ["host", "jumbo", "lab-host", "scratch", "shared"]


def test_limas_template_gives_limas_values() -> None:
    """Lima's networks.TEMPLATE.yaml (lima-vm/lima#4394), read unchanged."""
    cfg = load_config(DATA / "lima-template.yaml")
    assert sorted(cfg.networks) == ["debug", "host", "shared"]
    assert cfg.networks["shared"] == net(subnet="192.168.107.1/24")
    assert cfg.networks["host"] == net(mode="host", router_advertisement=False, subnet="192.168.108.1/24")
    # The entry with every key commented out: Lima's documented defaults, subnet left to the platform.
    assert cfg.networks["debug"] == net()
    assert (cfg.networks["debug"].mode, cfg.networks["debug"].mtu, cfg.networks["debug"].subnet) == ("shared", 1500, None)
    # Lima's own entries: the same as vmnet-rs's built-ins.
    assert cfg.networks["shared"] == Config.defaults().networks["shared"]
    assert cfg.networks["host"] == Config.defaults().networks["host"]


def test_limas_documented_networks_yaml_gives_the_builtins() -> None:
    """The networks.yaml Lima's docs show has no vmnet section: the built-ins serve."""
    cfg = load_config(DATA / "lima-docs-networks.yaml")
    assert cfg.networks == Config.defaults().networks and cfg.broker == Config.defaults().broker


def test_every_key_is_read() -> None:
    cfg = load_config(DATA / "full.yaml")
    assert cfg.broker == dataclasses.replace(
        BrokerSettings.default(),
        idle_timeout=300,
        allowed_users=("root", "alice", "1001"),
        allowed_groups=("vmnet-rs", "staff"),
        socket="/run/vmnet-rs/test.sock",
        mach_service="io.github.vmnet-rs.test",
    )
    assert cfg.networks["lab"] == net(
        mode="shared",
        dhcp=True,
        dns_proxy=False,
        mtu=9000,
        nat44=True,
        nat66=False,
        router_advertisement=False,
        subnet="10.77.0.1/16",
        ipv6_prefix="fd00:77::/64",
        port_forwarding=(
            PortForward("tcp", 2222, "10.77.0.10", 22, "ipv4"),
            PortForward("udp", 5353, "fd00:77::10", 5353, "ipv6"),
        ),
        dhcp_reservations=(DhcpReservation("52:54:00:aa:bb:01", "10.77.0.10"),),
        external_interface="en1",
        isolation=True,
        offload=True,
    )
    assert cfg.networks["backplane"].gateway == "172.20.0.1"
    assert sorted(cfg.networks) == ["backplane", "host", "lab", "shared"]


# --- round trips ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["lima-networks.yaml", "full.yaml"])
def test_round_trip_is_lossless(name: str) -> None:
    cfg = load_config(DATA / name)
    text = cfg.to_json()
    # objects -> JSON -> Rust -> JSON: the native validator returns the very same text.
    assert _native.validate_config(text, "again") == text
    again = Config.from_json(text)
    assert again.networks == cfg.networks and again.broker == cfg.broker
    assert again.to_json() == text
    # YAML of the resolved config reads back to the same thing.
    assert load_config_text(yaml.safe_dump(cfg.to_dict()), "dumped.yaml").to_json() == text


def test_network_json_round_trip_and_lima_request() -> None:
    lab = load_config(DATA / "full.yaml").networks["lab"]
    assert NetworkConfig.from_json(lab.to_json(), "lab") == lab
    # A Lima client's Configuration: Go omitempty style, empty values mean unset.
    host = NetworkConfig.from_json('{"mode":"host","subnet":"192.168.108.0/24","routerAdvertisement":false,"mtu":0}',
                                   "host", "request", lima=True)
    assert host == Config.defaults().networks["host"]
    assert NetworkConfig.from_json('{"mode":"","subnet":""}', "x", lima=True) == net()


def test_differences() -> None:
    a = Config.defaults().networks["shared"]
    assert a.differences(a) == []
    b = net(mtu=9000, subnet="192.168.107.1/24", offload=True)
    assert a.differences(b) == ["mtu: 1500 != 9000", "offload: false != true"]


def test_unknown_network_name() -> None:
    with pytest.raises(ConfigError, match=r'^the built-in defaults: no network named "nope"; known networks: host, shared$'):
        Config.defaults().network("nope")


# --- errors, each with its exact message ---------------------------------------------------


def test_mtu_out_of_range() -> None:
    assert one("""
        vmnet:
          shared:
            mtu: 70000
    """) == 'networks.yaml:4: network "shared": key "mtu": 70000 is out of range; use 1280..9000'


def test_bad_cidr() -> None:
    assert one("""
        vmnet:
          lab:
            subnet: 192.168.50/24
    """) == ('networks.yaml:4: network "lab": key "subnet": "192.168.50/24" is not an IPv4 subnet; '
             'use a network address and prefix length like "192.168.107.0/24"')


def test_subnet_too_small() -> None:
    assert one("""
        vmnet:
          lab:
            subnet: 192.168.50.0/30
    """) == ('networks.yaml:4: network "lab": key "subnet": "192.168.50.0/30" is too small: a /30 leaves no room '
             'for the gateway, DHCP and VMs; use a prefix length of 8..29 (/24 is usual)')


def test_subnet_host_address() -> None:
    assert one("""
        vmnet:
          lab:
            subnet: 192.168.50.9/24
    """) == ('networks.yaml:4: network "lab": key "subnet": "192.168.50.9/24" is neither the network address nor '
             'its first host; use "192.168.50.0/24" (the gateway is then the first host)')


def test_overlapping_subnets() -> None:
    assert one("""
        vmnet:
          lab:
            subnet: 192.168.107.128/25
    """) == ('networks.yaml:4: network "lab": key "subnet": "192.168.107.128/25" overlaps 192.168.107.1/24 of '
             'built-in network "shared" (redefine it under vmnet to move it); give each network its own subnet')
    assert one("""
        vmnet:
          a:
            subnet: 10.0.0.0/8
          b:
            subnet: 10.20.0.0/16
    """) == ('networks.yaml:6: network "b": key "subnet": "10.20.0.0/16" overlaps 10.0.0.0/8 of network "a"; '
             'give each network its own subnet')


def test_reservation_outside_subnet_and_on_gateway() -> None:
    assert problems("""
        vmnet:
          lab:
            subnet: 10.1.0.0/24
            dhcpReservations:
              - mac: "52:54:00:00:00:01"
                address: 10.2.0.5
              - mac: "52:54:00:00:00:02"
                address: 10.1.0.1
    """) == [
        'networks.yaml:7: network "lab": key "dhcpReservations[0].address": "10.2.0.5" is outside the subnet '
        '10.1.0.1/24; use an address from 10.1.0.2 to 10.1.0.254',
        'networks.yaml:9: network "lab": key "dhcpReservations[1].address": "10.1.0.1" is the gateway '
        "(the host's own address); use an address from 10.1.0.2 to 10.1.0.254",
    ]


def test_bad_mac() -> None:
    assert one("""
        vmnet:
          lab:
            subnet: 10.1.0.0/24
            dhcpReservations:
              - {mac: "52:54:00:00:01", address: 10.1.0.5}
    """) == ('networks.yaml:6: network "lab": key "dhcpReservations[0].mac": "52:54:00:00:01" is not a MAC '
             'address; use six hex pairs like "52:54:00:12:34:56"')


def test_duplicate_ports() -> None:
    assert one("""
        vmnet:
          lab:
            subnet: 10.1.0.0/24
            portForwarding:
              - {protocol: tcp, externalPort: 8080, internalAddress: 10.1.0.5}
              - {protocol: tcp, externalPort: 8080, internalAddress: 10.1.0.6, internalPort: 80}
    """) == ('networks.yaml:7: network "lab": key "portForwarding[1].externalPort": 8080 tcp/ipv4 is already '
             'forwarded by portForwarding[0]; forward each host port once')


def test_port_out_of_range() -> None:
    assert one("""
        vmnet:
          lab:
            subnet: 10.1.0.0/24
            portForwarding:
              - protocol: tcp
                externalPort: 65536
                internalAddress: 10.1.0.5
    """) == 'networks.yaml:7: network "lab": key "portForwarding[0].externalPort": 65536 is out of range; use 1..65535'


def test_external_interface_needs_shared_mode() -> None:
    assert one("""
        vmnet:
          host:
            mode: host
            subnet: 192.168.108.0/24
            externalInterface: en0
    """) == ('networks.yaml:6: network "host": key "externalInterface": "en0" is set but mode is "host"; '
             'externalInterface needs mode "shared" (remove it or change the mode)')


def test_unknown_key_did_you_mean() -> None:
    assert one("""
        vmnet:
          shared:
            dnsproxy: false
    """) == (f'networks.yaml:4: network "shared": key "dnsproxy": unknown key (did you mean "dnsProxy"?); '
             f"allowed keys: {ALL_NETWORK_KEYS}")
    assert one("vmnets: {}\n") == (
        'networks.yaml:1: key "vmnets": unknown key (did you mean "vmnet"?); allowed keys: vmnet, broker '
        "(Lima's paths, group, networks are read and ignored)"
    )


def test_wrong_types() -> None:
    assert problems("""
        vmnet:
          shared:
            dhcp: "yes"
            mtu: big
            portForwarding: none
        broker:
          idleTimeout: 1.5
    """) == [
        'networks.yaml:4: network "shared": key "dhcp": "yes" is a string; use true or false',
        'networks.yaml:5: network "shared": key "mtu": "big" is a string; use an integer in 1280..9000',
        'networks.yaml:6: network "shared": key "portForwarding": "none" is a string; use a list of mappings '
        "with protocol, externalPort, internalAddress and internalPort",
        'networks.yaml:8: broker: key "idleTimeout": 1.5 is a decimal number; use an integer in 0..4294967295 (seconds; 0 never times out)',
    ]


def test_every_problem_is_reported_in_file_order() -> None:
    p = problems("""
        vmnet:
          a:
            mtu: 1
            subnet: 8.8.8.0/24
          b:
            mode: bridged
            colour: red
    """)
    assert [x.split(":")[1] for x in p] == ["4", "5", "7", "8"], p


def test_duplicate_keys() -> None:
    assert problems("""
        vmnet:
          lab:
            mtu: 1500
            mtu: 9000
          lab: {}
    """) == [
        'networks.yaml:5: network "lab": key "mtu": given twice (first on line 4); keep one',
        'networks.yaml:6: network "lab": defined twice (first on line 3); keep one',
    ]


def test_yaml_syntax_error() -> None:
    assert one("vmnet:\n  shared: [\n") .startswith("networks.yaml:3: not valid YAML: ")


def test_not_a_mapping() -> None:
    assert one("- shared\n") == (
        'networks.yaml: the file holds a list; use a mapping with a "vmnet" section of networks (and optionally "broker")'
    )


def test_unreadable_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    missing = tmp_path / "nope.yaml"
    monkeypatch.setenv("VMNET_RS_CONFIG", str(tmp_path / "other.yaml"))
    with pytest.raises(ConfigError) as info:
        load_config(missing)
    # Named explicitly: the variable has nothing to do with it.
    assert str(info.value) == f"{missing}: cannot read the configuration: No such file or directory; give a readable YAML file"
    monkeypatch.setenv("VMNET_RS_CONFIG", str(missing))
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value) == (f"{missing}: cannot read the configuration: No such file or directory; "
                               "give a readable YAML file (or unset VMNET_RS_CONFIG)")


def test_unreadable_place_on_the_search_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """An entry of the search path that cannot be looked at (an unreadable
    HOME) is one line naming it and what to do, not a traceback."""
    from vmnet_rs import config as cfgmod

    blocked = tmp_path / "home" / ".config" / "vmnet-rs" / "networks.yaml"

    def is_file(self: Path) -> bool:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.delenv("VMNET_RS_CONFIG", raising=False)
    monkeypatch.setattr(cfgmod, "config_search_path", lambda: [blocked])
    monkeypatch.setattr(cfgmod.Path, "is_file", is_file)
    with pytest.raises(ConfigError) as info:
        load_config()
    assert str(info.value) == (f"{blocked}: cannot look for a configuration file there: Permission denied; "
                               "make that directory readable, or name a file with --config or VMNET_RS_CONFIG")


def test_yaml_values_json_cannot_carry() -> None:
    assert one("""
        vmnet:
          lab:
            subnet: 2024-01-01
    """) == ('networks.yaml:4: network "lab": key "subnet": "2024-01-01" is not an IPv4 subnet; use a network '
             'address and prefix length like "192.168.107.0/24"')


# --- one validator: structured problems, lines found by key path -------------------------

BAD_DOCUMENTS = [
    {"vmnet": {"a": {"mtu": "x", "dhcp": 1, "mode": 5, "nat44": "no", "offload": "on"}}},
    {"vmnet": {"a": {"subnet": 24, "ipv6Prefix": [1], "externalInterface": {"x": 1}}}},
    {"vmnet": {"a": {"portForwarding": [1, {"protocol": 6, "externalPort": "22", "internalAddress": 5,
                                            "internalPort": True, "addressFamily": 4, "extra": 1}]}}},
    {"vmnet": {"a": {"dhcpReservations": [{"mac": 1, "address": 2, "adress": 3}], "routerAdvertisment": True}}},
    {"vmnet": {"a": "shared", "b": []}},
    {"vmnett": {}, "brokr": {}, "paths": {}},
    {"broker": {"idleTimeout": "1", "allowedUsers": "root", "allowedGroups": [True], "socket": 1, "machService": 2}},
]


@pytest.mark.parametrize("doc", BAD_DOCUMENTS, ids=range(len(BAD_DOCUMENTS)))
def test_every_problem_gets_the_line_of_its_key_path(doc: object) -> None:
    """The validator's problems carry key paths; loaded as YAML, each gets
    the line of its key (so the same text as the native message, plus a line)."""
    result = json.loads(_native.check_config(json.dumps(doc), "f.yaml"))
    assert result["config"] is None and result["problems"]
    native = [f'f.yaml: {p["detail"]}' for p in result["problems"]]
    with pytest.raises(ConfigError) as info:
        _native.validate_config(json.dumps(doc), "f.yaml")
    assert str(info.value).splitlines() == native
    text = yaml.safe_dump(doc, sort_keys=False)
    lines = text.splitlines()
    for p in problems(text, "f.yaml"):
        where, _, detail = p.partition(": ")
        assert f"f.yaml: {detail}" in native, p
        line = int(where.split(":")[1])
        # The line named holds the last key of the problem's path (or the list item it is in).
        wanted = next(q for q in result["problems"] if q["detail"] == detail)
        last = next((str(x) for x in reversed(wanted["path"]) if isinstance(x, str)), None)
        assert last is None or last in lines[line - 1] or lines[line - 1].lstrip().startswith("-"), (p, lines[line - 1])


def test_problems_are_structured() -> None:
    doc = {"vmnet": {"lab": {"mtuu": 1500, "portForwarding": [{"protocol": "tcp", "externalPort": 0,
                                                               "internalAddress": "192.168.50.5"}]}}}
    result = json.loads(_native.check_config(json.dumps(doc), "n.yaml"))
    by_key = {p["key"]: p for p in result["problems"]}
    typo = by_key["mtuu"]
    assert typo["section"] == "network" and typo["network"] == "lab"
    assert typo["path"] == ["vmnet", "lab", "mtuu"]
    assert (typo["what"], typo["hint"]) == ("unknown key", "mtu")
    assert typo["allowed"] == f"allowed keys: {ALL_NETWORK_KEYS}"
    port = by_key["portForwarding[0].externalPort"]
    assert port["path"] == ["vmnet", "lab", "portForwarding", 0, "externalPort"]
    assert (port["what"], port["allowed"], port["hint"]) == ("0 is out of range", "use 1..65535", None)


def test_line_is_found_by_path_not_by_message_text() -> None:
    """A key holding dots and brackets (which a message-text parser would
    split) still gets its own line."""
    assert one("""
        vmnet:
          lab:
            mode: host
            "port[0].x": 1
    """) == (f'networks.yaml:5: network "lab": key "port[0].x": unknown key; allowed keys: {ALL_NETWORK_KEYS}')


@pytest.mark.parametrize(
    "section, typo, expected",
    [("vmnet: {shared: {%s: 1}}", "mtuu", "mtu"), ("vmnet: {shared: {%s: false}}", "dns_proxy", "dnsProxy"),
     ("broker: {%s: 1}", "idle", "idleTimeout"), ("vmnet: {shared: {%s: 1}}", "colour", None),
     ("%s: {}", "vmnett", "vmnet")],
)
def test_did_you_mean(section: str, typo: str, expected: object) -> None:
    p = one(section % typo + "\n")
    hint = f' (did you mean "{expected}"?)' if expected else ""
    assert f'key "{typo}": unknown key{hint}; allowed keys: ' in p, p


# --- finding the file ----------------------------------------------------------------------


def test_search_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    explicit = tmp_path / "explicit.yaml"
    env = tmp_path / "env.yaml"
    user = tmp_path / "xdg" / "vmnet-rs" / "networks.yaml"
    for p in (explicit, env, user):
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text("vmnet: {}\n")
    monkeypatch.setattr(cfgmod.sys, "platform", "linux")
    monkeypatch.setattr(cfgmod.os, "geteuid", lambda: 1000)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("VMNET_RS_CONFIG", str(env))
    assert cfgmod.find_config_file(explicit) == explicit
    assert cfgmod.find_config_file() == env
    monkeypatch.delenv("VMNET_RS_CONFIG")
    assert cfgmod.config_search_path() == [user, cfgmod.SYSTEM_CONFIG]
    assert cfgmod.find_config_file() == user
    monkeypatch.setattr(cfgmod.os, "geteuid", lambda: 0)
    assert cfgmod.config_search_path() == [cfgmod.SYSTEM_CONFIG]


def test_macos_falls_back_to_limas_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lima = tmp_path / "lima" / "_config" / "networks.yaml"
    lima.parent.mkdir(parents=True)
    lima.write_bytes((DATA / "lima-networks.yaml").read_bytes())
    monkeypatch.setattr(cfgmod.sys, "platform", "darwin")
    monkeypatch.delenv("VMNET_RS_CONFIG", raising=False)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "none"))
    monkeypatch.setenv("LIMA_HOME", str(tmp_path / "lima"))
    assert cfgmod.find_config_file() == lima
    assert "jumbo" in load_config().networks


def test_no_file_means_builtins(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("VMNET_RS_CONFIG", raising=False)
    monkeypatch.setattr(cfgmod, "config_search_path", lambda: [tmp_path / "absent.yaml"])
    cfg = load_config()
    assert cfg.source is None and cfg.to_json() == Config.defaults().to_json()


def test_access_keys_and_who_may_use_each_network(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from vmnet_rs.cli import cli

    text = textwrap.dedent("""\
        broker:
          clientNetworks: restricted
          maxPortsPerUser: 8
        vmnet:
          lab:
            mode: host
            subnet: 10.9.0.0/24
            allowedUsers: [alice, 1000]
            allowedGroups: []
        """)
    cfg = load_config_text(text, "networks.yaml")
    assert cfg.broker.client_networks == "restricted" and cfg.broker.max_ports_per_user == 8
    assert cfg.networks["lab"].allowed_users == ("alice", "1000") and cfg.networks["lab"].allowed_groups == ()
    assert cfg.networks["shared"].allowed_users is None
    assert Config.from_json(cfg.to_json()).to_json() == cfg.to_json()
    assert Config.defaults().broker.client_networks == ("any" if cfgmod.sys.platform == "darwin" else "none")
    # Same words as the native checker, line numbers added.
    bad = "broker:\n  clientNetworks: [any]\n  maxPortsPerUser: many\nvmnet:\n  lab:\n    allowedUsers: alice\n"
    with pytest.raises(ConfigError) as e:
        load_config_text(bad, "networks.yaml")
    assert str(e.value).splitlines() == [
        'networks.yaml:2: broker: key "clientNetworks": ["any"] is a list; use one of none, restricted, any',
        'networks.yaml:3: broker: key "maxPortsPerUser": "many" is a string; use an integer in 1..65535 (ports one user may hold at once)',
        'networks.yaml:6: network "lab": key "allowedUsers": "alice" is a string; use a list of user names or numeric ids',
    ]
    path = tmp_path / "networks.yaml"
    path.write_text(text)
    out = CliRunner().invoke(cli, ["networks", "--config", str(path)])
    assert out.exit_code == 0, out.output
    assert "  lab: users [alice, 1000], groups [] (its own allowedUsers/allowedGroups; an unnamed one is empty)" in out.output
    assert "  host, shared: users [root], groups [vmnet-rs] (the broker's)" in out.output
    assert "clientNetworks: restricted, and hold at most 8 ports each (maxPortsPerUser)" in out.output
    assert "warning" not in out.output, "both lists named: nothing changed meaning"


def test_one_named_list_fails_closed_and_networks_warns(tmp_path: Path) -> None:
    """A network naming only allowedUsers (or only allowedGroups) has the
    other list empty, not the broker's; `networks` shows it and warns that
    the file's meaning changed; `networks check` warns on stderr."""
    from click.testing import CliRunner

    from vmnet_rs.cli import cli

    path = tmp_path / "networks.yaml"
    path.write_text(textwrap.dedent("""\
        broker:
          allowedUsers: [root, carol]
          allowedGroups: [vmnet-rs]
        vmnet:
          alices:
            mode: host
            subnet: 10.9.0.0/24
            allowedUsers: [alice]
          labs:
            mode: host
            subnet: 10.9.1.0/24
            allowedGroups: [lab]
          both:
            mode: host
            subnet: 10.9.2.0/24
            allowedUsers: [alice]
            allowedGroups: []
        """))
    out = CliRunner().invoke(cli, ["networks", "--config", str(path)])
    assert out.exit_code == 0, out.output
    lines = out.output.splitlines()
    assert "  alices: users [alice], groups [] (its own allowedUsers/allowedGroups; an unnamed one is empty)" in lines
    assert "  labs: users [], groups [lab] (its own allowedUsers/allowedGroups; an unnamed one is empty)" in lines
    assert "  host, shared: users [root, carol], groups [vmnet-rs] (the broker's)" in lines
    warnings = [line for line in lines if line.startswith("warning:")]
    assert warnings == [
        "warning: network alices names only allowedUsers, so its allowedGroups is empty: the broker's allowedGroups [vmnet-rs] "
        "no longer applies to it (an unset list used to fall back to the broker's; see the changelog); "
        "to keep them, add allowedGroups: [vmnet-rs] to network alices",
        "warning: network labs names only allowedGroups, so its allowedUsers is empty: the broker's allowedUsers [root, carol] "
        "no longer applies to it (an unset list used to fall back to the broker's; see the changelog); "
        "to keep them, add allowedUsers: [root, carol] to network labs",
    ]
    check = CliRunner().invoke(cli, ["networks", "check", str(path)])
    assert check.exit_code == 0, check.output
    assert [line.split(": ", 1)[1] for line in check.stderr.splitlines()] == warnings


def test_python_fields_are_the_rust_keys_in_order():
    """The model's to_dict/from_dict are derived from its fields; the fields
    must be Rust's keys (rust/src/config.rs), in Rust's order, or a key would
    be dropped on its way back to the broker."""
    rust = json.loads(_native.validate_network("{}", "<test>", "t", False))
    mine = cfgmod.NetworkConfig.lima_default()
    assert list(mine.to_dict()) == list(rust)
    assert cfgmod.NetworkConfig.from_dict(rust) == mine
