"""Type stubs for the native module ``vmnet_rs._native`` (checked by mypy.stubtest)."""

# One name per line, so each layer adds its own without merge conflicts.
__all__ = [
    "__version__",
    "config_keys",
    "default_config_json",
    "network_differences",
    "validate_config",
    "validate_network",
]

__version__: str

# config (rust/src/python/config.rs); problems raise vmnet_rs.errors.ConfigError
def validate_config(json_text: str, source: str) -> str: ...
def validate_network(json_text: str, source: str, name: str, lima: bool = False) -> str: ...
def network_differences(a_json: str, b_json: str) -> list[str]: ...
def default_config_json() -> str: ...
def config_keys() -> dict[str, list[str]]: ...
