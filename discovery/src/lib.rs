//! LAN discovery and network-interface tracking for cnspr (mDNS comes with the zero-config issue).

/// DNS-SD service type every cnspr daemon advertises.
pub const SERVICE_TYPE: &str = "_cnspr._udp.local.";
