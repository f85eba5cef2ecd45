//! Stage 1, network: the peer address -> [`ClientIp`].
//!
//! Allow/deny lists, trusted proxies and forwarded headers arrive with the network-policy work;
//! until then the client address is the TCP peer, and the listener's bind address (loopback in
//! the embedded default) is the only network boundary.

use std::net::{IpAddr, SocketAddr};

/// The address a request is judged by. Built only by [`client_ip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp(IpAddr);

impl ClientIp {
    pub fn addr(&self) -> IpAddr {
        self.0
    }
}

/// Derive the client address from the TCP peer. IPv4-mapped IPv6 peers (dual-stack listeners)
/// are reported as the IPv4 addresses they are.
pub fn client_ip(peer: SocketAddr) -> ClientIp {
    ClientIp(peer.ip().to_canonical())
}
