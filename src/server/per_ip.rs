//! The cap on open connections per client address (`[rate_limits] max_connections_per_ip`),
//! enforced at accept on the TCP peer address: a connection over the cap is closed before the
//! TLS handshake, so one address cannot hold every slot of `max_connections`.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

/// Open connections by client address. Entries disappear when their count drops to zero, so
/// the map holds only addresses with a connection open.
#[derive(Debug)]
pub struct PerIpConnections {
    cap: AtomicUsize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PerIpConnections {
    pub fn new(cap: usize) -> PerIpConnections {
        PerIpConnections {
            cap: AtomicUsize::new(cap),
            open: Mutex::new(HashMap::new()),
        }
    }

    /// A reload may change the cap; connections already open are not closed.
    pub fn set_cap(&self, cap: usize) {
        self.cap.store(cap, Ordering::Relaxed);
    }

    /// Count a new connection from `ip`, or `None` if the address is at its cap. The slot is
    /// given back when the returned guard drops.
    pub fn try_open(self: &Arc<Self>, ip: IpAddr) -> Option<IpSlot> {
        let ip = ip.to_canonical();
        let cap = self.cap.load(Ordering::Relaxed);
        let mut open = self.lock();
        let count = open.entry(ip).or_insert(0);
        if *count >= cap {
            if *count == 0 {
                open.remove(&ip);
            }
            return None;
        }
        *count += 1;
        Some(IpSlot {
            owner: Arc::clone(self),
            ip,
        })
    }

    /// Connections open from `ip` now.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        self.lock().get(&ip.to_canonical()).copied().unwrap_or(0)
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<IpAddr, usize>> {
        // The map stays consistent even if a holder panicked: every update is one statement.
        self.open
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One counted connection; dropping it gives the slot back.
#[derive(Debug)]
pub struct IpSlot {
    owner: Arc<PerIpConnections>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        let mut open = self.owner.lock();
        if let Some(count) = open.get_mut(&self.ip) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn cap_is_per_address_and_slots_come_back_on_drop() {
        let conns = Arc::new(PerIpConnections::new(2));
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let first = conns.try_open(a).unwrap();
        let _second = conns.try_open(a).unwrap();
        assert!(conns.try_open(a).is_none());
        assert!(
            conns.try_open(b).is_some(),
            "another address is not affected"
        );
        drop(first);
        assert_eq!(conns.open_from(a), 1);
        assert!(conns.try_open(a).is_some());
    }

    #[test]
    fn ipv4_mapped_peers_count_as_their_ipv4_address() {
        let conns = Arc::new(PerIpConnections::new(1));
        let _v4 = conns.try_open("192.0.2.1".parse().unwrap()).unwrap();
        assert!(
            conns
                .try_open("::ffff:192.0.2.1".parse().unwrap())
                .is_none()
        );
    }

    #[test]
    fn closed_addresses_leave_no_entry_behind() {
        let conns = Arc::new(PerIpConnections::new(1));
        let ip: IpAddr = "2001:db8::1".parse().unwrap();
        drop(conns.try_open(ip).unwrap());
        assert!(conns.lock().is_empty());
        conns.set_cap(0);
        assert!(conns.try_open(ip).is_none());
        assert!(conns.lock().is_empty());
    }
}
