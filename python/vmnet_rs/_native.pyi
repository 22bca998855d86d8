"""Type stubs for the native module ``vmnet_rs._native`` (checked by mypy.stubtest)."""

import os
from typing import Any, final

__version__: str

# broker (rust/src/python/broker.rs), Linux
DEFAULT_SOCKET: str

@final
class Broker:
    """An in-process broker serving a Unix socket (see vmnet_rs.broker.Broker)."""

    def __new__(
        cls,
        socket: str | os.PathLike[str] | None = None,
        settings_json: str | None = None,
        networks_json: str | None = None,
        idle_timeout: int | None = None,
        backend: str = "platform",
        state_dir: str | os.PathLike[str] | None = None,
        monitor_interval: float = 1.0,
    ) -> Broker: ...
    def start(self) -> None: ...
    def stop(self) -> None: ...
    def wait(self, timeout: float | None = None) -> str | None: ...
    @property
    def running(self) -> bool: ...
    @property
    def socket(self) -> str: ...
    @property
    def idle_timeout(self) -> int: ...

@final
class Client:
    """One connection to a broker (see vmnet_rs.broker.Client)."""

    def __new__(cls, socket: str | os.PathLike[str] | None = None, timeout: float | None = None) -> Client: ...
    def request(self, message: dict[str, Any]) -> dict[str, Any]: ...
    def request_raw(self, data: bytes) -> dict[str, Any]: ...
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def socket(self) -> str: ...

# logging (rust/src/python/log.rs)
def set_log_level(level: str) -> None: ...
