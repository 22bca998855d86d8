//! The broker: request handling, network cache, leases and idle exit.
