//! Packet relays between a VM's socket and its [`crate::vmnet::Interface`].
