"""Type stubs for the native module ``vmnet_rs._native`` (checked by mypy.stubtest)."""

__version__: str
