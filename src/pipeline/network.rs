//! Stage 1, network: the peer address (and, from trusted proxies only, the forwarded headers)
//! -> [`ClientIp`], then allow/deny lists -> [`Decision`].
//!
//! Owns the compiled [`NetworkPolicy`] (built by `app.rs` into each snapshot, and by the admin API
//! to check a change before applying it). It must not read bodies, tokens or anything a later
//! stage owns: it runs before all of them.
//!
//! Rules (DESIGN.md "Network"): deny wins; an empty allow list denies everything; per-source lists
//! narrow the global ones and never widen them; `::ffff:a.b.c.d` is matched as IPv4 and no other
//! embedding (IPv4-compatible, NAT64, 6to4, Teredo) is unwrapped. `X-Forwarded-For` and
//! `Forwarded` are read only when the peer is a trusted proxy, right to left, skipping trusted
//! hops; a malformed hop refuses the request (never skipped). `X-Real-IP`, `True-Client-IP` and
//! the like are never read.

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;
use ipnet::IpNet;

use crate::config::NetworkConfig;
use crate::config::network::parse_ip;

/// Longest forwarded header we read (all instances together), in bytes.
pub const MAX_FORWARDED_BYTES: usize = 2048;
/// Most hops we read from a forwarded header.
pub const MAX_FORWARDED_HOPS: usize = 32;

/// Why a request was refused before any allow/deny decision could be made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NetworkError {
    #[error("malformed forwarded header from a trusted proxy: {0}")]
    MalformedForwarded(&'static str),
    #[error("both X-Forwarded-For and Forwarded from a trusted proxy; send only one")]
    AmbiguousForwarded,
}

/// The address a request is judged by. Built only by [`client_ip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientIp {
    addr: IpAddr,
    /// Whether the address came from a forwarded header rather than the peer.
    forwarded: bool,
}

impl ClientIp {
    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    /// True when the address was taken from `X-Forwarded-For` / `Forwarded`.
    pub fn is_forwarded(&self) -> bool {
        self.forwarded
    }
}

impl fmt::Display for ClientIp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.addr.fmt(f)
    }
}

/// Which list made a decision: a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    Global,
    Source,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::Global => "global",
            Scope::Source => "source",
        }
    }
}

/// What matched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RuleKind {
    Deny(IpNet),
    Allow(IpNet),
    NoAllowMatched,
}

/// The rule that made a decision, for logs, spans and `bucketgate explain`: `deny 10.0.0.0/8`,
/// `allow 127.0.0.0/8`, `no allow rule matched`, `source photos: allow 10.1.0.0/16`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub scope: Scope,
    /// The source whose lists matched (set when `scope` is `Source`).
    pub source: Option<Arc<str>>,
    pub kind: RuleKind,
}

impl fmt::Display for RuleRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(source) = &self.source {
            write!(f, "source {source}: ")?;
        }
        match &self.kind {
            RuleKind::Deny(net) => write!(f, "deny {net}"),
            RuleKind::Allow(net) => write!(f, "allow {net}"),
            RuleKind::NoAllowMatched => f.write_str("no allow rule matched"),
        }
    }
}

/// The outcome of the network stage for one client address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    pub rule: RuleRef,
}

/// Sorted, disjoint ranges of one address family, each with the CIDR it came from. CIDRs either
/// nest or are disjoint, so keeping the outermost of nested ones loses no address; a lookup is a
/// binary search over `starts` (kept apart from the rest for cache locality).
#[derive(Debug, Clone, Default)]
struct Ranges<T> {
    starts: Vec<T>,
    ends: Vec<T>,
    nets: Vec<IpNet>,
}

impl<T: Copy + Ord> Ranges<T> {
    fn build(mut items: Vec<(T, T, IpNet)>) -> Ranges<T> {
        // Outermost first among equal starts, so nested ones are dropped below.
        items.sort_by(|a, b| a.0.cmp(&b.0).then(b.1.cmp(&a.1)));
        let mut ranges = Ranges {
            starts: Vec::with_capacity(items.len()),
            ends: Vec::with_capacity(items.len()),
            nets: Vec::with_capacity(items.len()),
        };
        for (start, end, net) in items {
            if ranges.ends.last().is_some_and(|&last| start <= last) {
                continue;
            }
            ranges.starts.push(start);
            ranges.ends.push(end);
            ranges.nets.push(net);
        }
        ranges
    }

    fn find(&self, x: T) -> Option<IpNet> {
        let i = self.starts.partition_point(|&s| s <= x);
        let i = i.checked_sub(1)?;
        (self.ends.get(i).is_some_and(|&end| x <= end))
            .then(|| self.nets.get(i).copied())
            .flatten()
    }
}

/// One compiled CIDR list (IPv4 and IPv6).
#[derive(Debug, Clone, Default)]
struct Matcher {
    v4: Ranges<u32>,
    v6: Ranges<u128>,
}

impl Matcher {
    fn new(nets: &[IpNet]) -> Matcher {
        let mut v4 = Vec::new();
        let mut v6 = Vec::new();
        for net in nets {
            match net {
                IpNet::V4(n) => v4.push((u32::from(n.network()), u32::from(n.broadcast()), *net)),
                IpNet::V6(n) => v6.push((u128::from(n.network()), u128::from(n.broadcast()), *net)),
            }
        }
        Matcher {
            v4: Ranges::build(v4),
            v6: Ranges::build(v6),
        }
    }

    /// `ip` must be canonical already (see [`canonical`]).
    fn find(&self, ip: IpAddr) -> Option<IpNet> {
        match ip {
            IpAddr::V4(a) => self.v4.find(u32::from(a)),
            IpAddr::V6(a) => self.v6.find(u128::from(a)),
        }
    }

    fn contains(&self, ip: IpAddr) -> bool {
        self.find(ip).is_some()
    }
}

#[derive(Debug, Clone)]
struct SourcePolicy {
    name: Arc<str>,
    /// `None`: no narrowing.
    allow: Option<Matcher>,
    deny: Matcher,
}

/// The compiled network policy of one snapshot.
#[derive(Debug, Clone)]
pub struct NetworkPolicy {
    allow: Matcher,
    deny: Matcher,
    trusted_proxies: Matcher,
    proxy_protocol: Matcher,
    proxy_protocol_timeout: Duration,
    sources: HashMap<String, SourcePolicy>,
    config: NetworkConfig,
}

/// `::ffff:a.b.c.d` -> `a.b.c.d`; every other address as it is.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl NetworkPolicy {
    /// Compile validated lists. Logs a warning for a rule that allows a whole address family.
    pub fn compile(config: &NetworkConfig) -> NetworkPolicy {
        let wide = |nets: &[IpNet]| {
            nets.iter()
                .filter(|n| crate::config::network::is_whole_family(n))
                .map(ToString::to_string)
                .collect::<Vec<_>>()
        };
        let mut world = wide(&config.allow);
        for lists in config.sources.values() {
            world.extend(wide(lists.allow.as_deref().unwrap_or_default()));
        }
        if !world.is_empty() {
            tracing::warn!(rules = ?world, "network allow list admits every address of a family");
        }
        if config.allow.is_empty() {
            tracing::warn!("network allow list is empty: every request is denied");
        }
        let sources = config
            .sources
            .iter()
            .map(|(name, lists)| {
                (
                    name.clone(),
                    SourcePolicy {
                        name: Arc::from(name.as_str()),
                        allow: lists.allow.as_deref().map(Matcher::new),
                        deny: Matcher::new(&lists.deny),
                    },
                )
            })
            .collect();
        NetworkPolicy {
            allow: Matcher::new(&config.allow),
            deny: Matcher::new(&config.deny),
            trusted_proxies: Matcher::new(&config.trusted_proxies),
            proxy_protocol: Matcher::new(&config.proxy_protocol),
            proxy_protocol_timeout: config.proxy_protocol_timeout,
            sources,
            config: config.clone(),
        }
    }

    /// The lists this policy was compiled from.
    pub fn config(&self) -> &NetworkConfig {
        &self.config
    }

    /// Judge a client address, globally and then by `source`'s own lists if it has any. Deny
    /// wins at every level; a source's allow list can only narrow the global one.
    pub fn decide(&self, ip: IpAddr, source: Option<&str>) -> Decision {
        let ip = canonical(ip);
        let source = source.and_then(|s| self.sources.get(s));
        let global = |kind| RuleRef {
            scope: Scope::Global,
            source: None,
            kind,
        };
        let scoped = |s: &SourcePolicy, kind| RuleRef {
            scope: Scope::Source,
            source: Some(Arc::clone(&s.name)),
            kind,
        };
        let deny = |rule| Decision {
            allowed: false,
            rule,
        };
        if let Some(net) = self.deny.find(ip) {
            return deny(global(RuleKind::Deny(net)));
        }
        if let Some(s) = source
            && let Some(net) = s.deny.find(ip)
        {
            return deny(scoped(s, RuleKind::Deny(net)));
        }
        let Some(global_allow) = self.allow.find(ip) else {
            return deny(global(RuleKind::NoAllowMatched));
        };
        if let Some(s) = source
            && let Some(allow) = &s.allow
        {
            return match allow.find(ip) {
                Some(net) => Decision {
                    allowed: true,
                    rule: scoped(s, RuleKind::Allow(net)),
                },
                None => deny(scoped(s, RuleKind::NoAllowMatched)),
            };
        }
        Decision {
            allowed: true,
            rule: global(RuleKind::Allow(global_allow)),
        }
    }

    /// Whether `peer` must send a PROXY protocol header (and nobody else may).
    pub fn requires_proxy_header(&self, peer: IpAddr) -> bool {
        self.proxy_protocol.contains(canonical(peer))
    }

    pub fn proxy_protocol_timeout(&self) -> Duration {
        self.proxy_protocol_timeout
    }

    pub fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.trusted_proxies.contains(canonical(ip))
    }
}

/// Derive the client address: the peer itself, unless the peer is a trusted proxy and sent
/// `X-Forwarded-For` or `Forwarded`; then the right-most hop that is not a trusted proxy (the
/// left-most if every hop is trusted). From any other peer those headers are ignored entirely.
pub fn client_ip(
    peer: SocketAddr,
    headers: &HeaderMap,
    policy: &NetworkPolicy,
) -> Result<ClientIp, NetworkError> {
    let peer_ip = canonical(peer.ip());
    let from_peer = ClientIp {
        addr: peer_ip,
        forwarded: false,
    };
    if !policy.trusted_proxies.contains(peer_ip) {
        return Ok(from_peer);
    }
    let xff = headers.get_all(http::header::HeaderName::from_static("x-forwarded-for"));
    let fwd = headers.get_all(http::header::FORWARDED);
    let hops = match (xff.iter().next().is_some(), fwd.iter().next().is_some()) {
        (false, false) => return Ok(from_peer),
        (true, true) => return Err(NetworkError::AmbiguousForwarded),
        (true, false) => parse_header(xff.iter(), parse_xff_element)?,
        (false, true) => parse_header(fwd.iter(), parse_forwarded_element)?,
    };
    let chosen = hops
        .iter()
        .rev()
        .find(|ip| !policy.trusted_proxies.contains(**ip))
        .or(hops.first())
        .copied()
        .ok_or(NetworkError::MalformedForwarded("no hops"))?;
    Ok(ClientIp {
        addr: chosen,
        forwarded: true,
    })
}

type Malformed = NetworkError;

fn malformed(why: &'static str) -> Malformed {
    NetworkError::MalformedForwarded(why)
}

/// Every instance of one header, concatenated in order as one comma list, each element parsed
/// by `element`, within the size and hop limits.
fn parse_header<'a>(
    values: impl Iterator<Item = &'a http::HeaderValue>,
    element: fn(&str) -> Result<IpAddr, Malformed>,
) -> Result<Vec<IpAddr>, Malformed> {
    let mut total = 0usize;
    let mut hops = Vec::new();
    for value in values {
        total += value.len();
        if total > MAX_FORWARDED_BYTES {
            return Err(malformed("header too long"));
        }
        let text = value
            .to_str()
            .map_err(|_| malformed("header is not visible ASCII"))?;
        for part in split_outside_quotes(text, b',')? {
            if hops.len() == MAX_FORWARDED_HOPS {
                return Err(malformed("too many hops"));
            }
            hops.push(canonical(element(part.trim_matches([' ', '\t']))?));
        }
    }
    Ok(hops)
}

/// Split at `sep` bytes that are not inside a quoted string. A backslash escape or an unclosed
/// quote is refused (no legitimate address needs either).
fn split_outside_quotes(text: &str, sep: u8) -> Result<Vec<&str>, Malformed> {
    let mut parts = Vec::new();
    let mut in_quotes = false;
    let mut start = 0;
    for (i, b) in text.bytes().enumerate() {
        match b {
            b'"' => in_quotes = !in_quotes,
            b'\\' => return Err(malformed("escape in a forwarded header")),
            _ if b == sep && !in_quotes => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err(malformed("unclosed quote"));
    }
    parts.push(&text[start..]);
    Ok(parts)
}

/// One `X-Forwarded-For` element: a bare IPv4 or IPv6 address, nothing else (no port, no
/// brackets, no `unknown`).
fn parse_xff_element(text: &str) -> Result<IpAddr, Malformed> {
    if text.is_empty() {
        return Err(malformed("empty hop"));
    }
    parse_ip(text).ok_or(malformed("hop is not an IP address"))
}

/// One `Forwarded` element (RFC 7239): `;`-separated pairs, exactly one `for=`, whose value is an
/// IPv4 address (bare or quoted) or a quoted, bracketed IPv6 address. Ports, `unknown` and
/// obfuscated identifiers are refused.
fn parse_forwarded_element(text: &str) -> Result<IpAddr, Malformed> {
    if text.is_empty() {
        return Err(malformed("empty hop"));
    }
    let mut found = None;
    for pair in split_outside_quotes(text, b';')? {
        let pair = pair.trim_matches([' ', '\t']);
        let (name, value) = pair
            .split_once('=')
            .ok_or(malformed("Forwarded pair without `=`"))?;
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(malformed("bad Forwarded parameter name"));
        }
        if !name.eq_ignore_ascii_case("for") {
            continue;
        }
        if found.is_some() {
            return Err(malformed("two `for=` in one Forwarded element"));
        }
        found = Some(parse_forwarded_for(value)?);
    }
    found.ok_or(malformed("Forwarded element without `for=`"))
}

fn parse_forwarded_for(value: &str) -> Result<IpAddr, Malformed> {
    let quoted = value.len() >= 2 && value.starts_with('"') && value.ends_with('"');
    let inner = if quoted {
        &value[1..value.len() - 1]
    } else {
        value
    };
    if inner.contains('"') {
        return Err(malformed("stray quote in `for=`"));
    }
    if let Some(bracketed) = inner.strip_prefix('[') {
        // RFC 7239: an IPv6 address is bracketed, and then must be quoted.
        let v6 = bracketed
            .strip_suffix(']')
            .ok_or(malformed("`for=` IPv6 with a port or no closing bracket"))?;
        if !quoted {
            return Err(malformed("`for=` IPv6 must be quoted"));
        }
        return match parse_ip(v6) {
            Some(ip @ IpAddr::V6(_)) => Ok(ip),
            _ => Err(malformed("`for=` bracketed value is not IPv6")),
        };
    }
    match parse_ip(inner) {
        Some(ip @ IpAddr::V4(_)) => Ok(ip),
        _ => Err(malformed("`for=` is not an IP address")),
    }
}

/// Stage 1's part of `bucketgate explain` (`pipeline::explain` runs the rest): the client address
/// the gateway would use, the decision and the rule.
#[derive(Debug, Clone)]
pub struct Explanation {
    pub peer: IpAddr,
    pub client: Result<ClientIp, NetworkError>,
    pub source: Option<String>,
    pub decision: Option<Decision>,
}

impl Explanation {
    pub fn allowed(&self) -> bool {
        self.decision.as_ref().is_some_and(|d| d.allowed)
    }
}

/// Dry-run stage 1 for a peer, forwarded headers and the source segment of the request's route
/// ([`super::route::Route::network_source`]).
pub fn explain(
    peer: IpAddr,
    headers: &HeaderMap,
    source: Option<&str>,
    policy: &NetworkPolicy,
) -> Explanation {
    let client = client_ip(SocketAddr::new(peer, 0), headers, policy);
    let decision = client
        .as_ref()
        .ok()
        .map(|c| policy.decide(c.addr(), source));
    Explanation {
        peer,
        client,
        source: source.map(str::to_owned),
        decision,
    }
}

impl fmt::Display for Explanation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "peer:     {}", self.peer)?;
        match &self.client {
            Ok(c) if c.is_forwarded() => writeln!(
                f,
                "client:   {c} (from forwarded headers; peer is a trusted proxy)"
            )?,
            Ok(c) => writeln!(f, "client:   {c} (the peer)")?,
            Err(e) => writeln!(f, "client:   none ({e})")?,
        }
        match &self.source {
            Some(s) => writeln!(f, "source:   {s}")?,
            None => writeln!(f, "source:   none (not an object route; global lists only)")?,
        }
        match &self.decision {
            Some(d) => {
                writeln!(
                    f,
                    "decision: {}",
                    if d.allowed { "allow" } else { "deny (403)" }
                )?;
                writeln!(f, "rule:     {}", d.rule)
            }
            None => {
                writeln!(f, "decision: refuse (400)")?;
                writeln!(f, "rule:     malformed forwarded headers are never skipped")
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::config::SourceLists;
    use crate::config::network::parse_cidr;
    use std::collections::BTreeMap;

    fn nets(list: &[&str]) -> Vec<IpNet> {
        list.iter().map(|s| parse_cidr(s).unwrap()).collect()
    }

    fn policy(allow: &[&str], deny: &[&str], trusted: &[&str]) -> NetworkPolicy {
        NetworkPolicy::compile(&NetworkConfig {
            allow: nets(allow),
            deny: nets(deny),
            trusted_proxies: nets(trusted),
            ..NetworkConfig::default()
        })
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    fn client(
        p: &NetworkPolicy,
        peer: &str,
        pairs: &[(&str, &str)],
    ) -> Result<IpAddr, NetworkError> {
        client_ip(SocketAddr::new(ip(peer), 1234), &headers(pairs), p).map(|c| c.addr())
    }

    #[test]
    fn empty_allow_list_denies_everything() {
        let p = policy(&[], &[], &[]);
        let d = p.decide(ip("127.0.0.1"), None);
        assert!(!d.allowed);
        assert_eq!(d.rule.to_string(), "no allow rule matched");
    }

    #[test]
    fn cidr_boundaries_first_last_and_one_past() {
        let p = policy(&["10.1.2.0/24", "2001:db8::/126"], &[], &[]);
        assert!(p.decide(ip("10.1.2.0"), None).allowed);
        assert!(p.decide(ip("10.1.2.255"), None).allowed);
        assert!(!p.decide(ip("10.1.3.0"), None).allowed);
        assert!(!p.decide(ip("10.1.1.255"), None).allowed);
        assert!(p.decide(ip("2001:db8::3"), None).allowed);
        assert!(!p.decide(ip("2001:db8::4"), None).allowed);
    }

    #[test]
    fn deny_wins_and_names_the_rule() {
        let p = policy(&["10.0.0.0/8"], &["10.9.0.0/16"], &[]);
        let d = p.decide(ip("10.9.1.1"), None);
        assert!(!d.allowed);
        assert_eq!(d.rule.to_string(), "deny 10.9.0.0/16");
        let d = p.decide(ip("10.8.1.1"), None);
        assert_eq!(d.rule.to_string(), "allow 10.0.0.0/8");
    }

    #[test]
    fn nested_and_duplicate_rules_keep_every_address() {
        let p = policy(
            &[
                "10.1.0.0/16",
                "10.0.0.0/8",
                "10.0.0.0/8",
                "10.255.255.255/32",
            ],
            &[],
            &[],
        );
        for a in ["10.0.0.0", "10.1.2.3", "10.255.255.255", "10.128.0.0"] {
            assert!(p.decide(ip(a), None).allowed, "{a}");
        }
        assert!(!p.decide(ip("11.0.0.0"), None).allowed);
        assert!(!p.decide(ip("9.255.255.255"), None).allowed);
    }

    #[test]
    fn ipv4_mapped_clients_match_ipv4_rules() {
        let p = policy(&["127.0.0.0/8"], &[], &[]);
        assert!(p.decide(ip("::ffff:127.0.0.1"), None).allowed);
    }

    #[test]
    fn nat64_ipv4_compatible_6to4_and_teredo_are_not_unwrapped() {
        let p = policy(&["192.0.2.0/24"], &[], &[]);
        for a in [
            "64:ff9b::c000:201",                    // NAT64 of 192.0.2.1
            "::c000:201",                           // IPv4-compatible
            "2002:c000:201::1",                     // 6to4
            "2001:0:4136:e378:8000:63bf:3fff:fdd2", // Teredo
        ] {
            assert!(!p.decide(ip(a), None).allowed, "{a}");
        }
        let p = policy(&["64:ff9b::/96"], &[], &[]);
        assert!(p.decide(ip("64:ff9b::c000:201"), None).allowed);
        assert!(!p.decide(ip("192.0.2.1"), None).allowed);
    }

    #[test]
    fn source_lists_narrow_and_never_widen() {
        let mut sources = BTreeMap::new();
        sources.insert(
            "photos".to_owned(),
            SourceLists {
                allow: Some(nets(&["10.1.0.0/16", "192.168.0.0/16"])),
                deny: nets(&["10.1.9.0/24"]),
            },
        );
        sources.insert(
            "closed".to_owned(),
            SourceLists {
                allow: Some(Vec::new()),
                deny: Vec::new(),
            },
        );
        sources.insert(
            "open".to_owned(),
            SourceLists {
                allow: None,
                deny: nets(&["10.2.0.0/16"]),
            },
        );
        let p = NetworkPolicy::compile(&NetworkConfig {
            allow: nets(&["10.0.0.0/8"]),
            sources,
            ..NetworkConfig::default()
        });
        let d = p.decide(ip("10.1.2.3"), Some("photos"));
        assert_eq!(
            (d.allowed, d.rule.to_string()),
            (true, "source photos: allow 10.1.0.0/16".to_owned())
        );
        let d = p.decide(ip("10.3.2.3"), Some("photos"));
        assert_eq!(
            (d.allowed, d.rule.to_string()),
            (false, "source photos: no allow rule matched".to_owned())
        );
        // The source allows 192.168/16 but the global list does not: never widened.
        let d = p.decide(ip("192.168.1.1"), Some("photos"));
        assert_eq!(
            (d.allowed, d.rule.to_string()),
            (false, "no allow rule matched".to_owned())
        );
        let d = p.decide(ip("10.1.9.1"), Some("photos"));
        assert_eq!(
            (d.allowed, d.rule.to_string()),
            (false, "source photos: deny 10.1.9.0/24".to_owned())
        );
        assert!(!p.decide(ip("10.1.2.3"), Some("closed")).allowed);
        assert!(p.decide(ip("10.1.2.3"), Some("open")).allowed);
        assert!(!p.decide(ip("10.2.2.3"), Some("open")).allowed);
        assert!(p.decide(ip("10.3.2.3"), Some("unlisted")).allowed);
        assert_eq!(
            p.decide(ip("10.1.2.3"), Some("photos")).rule.scope,
            Scope::Source
        );
    }

    #[test]
    fn forwarded_headers_from_untrusted_peers_are_ignored() {
        let p = policy(&[], &[], &["127.0.0.5/32"]);
        let spoof = [
            ("x-forwarded-for", "1.2.3.4"),
            ("X-Real-IP", "1.2.3.4"),
            ("true-client-ip", "1.2.3.4"),
        ];
        assert_eq!(client(&p, "127.0.0.9", &spoof), Ok(ip("127.0.0.9")));
        // Even malformed or conflicting headers are not looked at.
        let junk = [
            ("x-forwarded-for", "nonsense"),
            ("forwarded", "for=unknown"),
        ];
        assert_eq!(client(&p, "127.0.0.9", &junk), Ok(ip("127.0.0.9")));
        // X-Real-IP from a trusted peer is ignored too.
        assert_eq!(
            client(&p, "127.0.0.5", &[("x-real-ip", "1.2.3.4")]),
            Ok(ip("127.0.0.5"))
        );
    }

    #[test]
    fn xff_chain_picks_the_rightmost_untrusted_hop() {
        let p = policy(&[], &[], &["127.0.0.5/32", "10.0.0.0/8"]);
        let h = [("x-forwarded-for", "203.0.113.9, 198.51.100.7, 10.0.0.2")];
        assert_eq!(client(&p, "127.0.0.5", &h), Ok(ip("198.51.100.7")));
        // Several header instances are one list, in order.
        let h = [
            ("x-forwarded-for", "203.0.113.9"),
            ("X-Forwarded-For", "10.0.0.3,10.0.0.2"),
        ];
        assert_eq!(client(&p, "127.0.0.5", &h), Ok(ip("203.0.113.9")));
        // Every hop trusted: the left-most.
        let h = [("x-forwarded-for", "10.0.0.9, 10.0.0.2")];
        assert_eq!(client(&p, "127.0.0.5", &h), Ok(ip("10.0.0.9")));
        let h = [("x-forwarded-for", "2001:db8::1")];
        assert_eq!(client(&p, "::ffff:127.0.0.5", &h), Ok(ip("2001:db8::1")));
        let h = [("x-forwarded-for", "::ffff:203.0.113.9")];
        assert_eq!(client(&p, "127.0.0.5", &h), Ok(ip("203.0.113.9")));
    }

    #[test]
    fn malformed_xff_hops_fail_closed() {
        let p = policy(&[], &[], &["127.0.0.5/32"]);
        let long = vec!["1.2.3.4"; 300].join(",");
        let many = vec!["1.2.3.4"; 33].join(",");
        for bad in [
            "010.0.0.1",
            "0x7f.0.0.1",
            "127.1",
            "1.2.3.4:80",
            "[2001:db8::1]",
            "[2001:db8::1]:80",
            "unknown",
            "1.2.3.4,,5.6.7.8",
            "",
            " , 1.2.3.4",
            "fe80::1%eth0",
            "_hidden",
            long.as_str(),
            many.as_str(),
        ] {
            let r = client(&p, "127.0.0.5", &[("x-forwarded-for", bad)]);
            assert!(
                matches!(r, Err(NetworkError::MalformedForwarded(_))),
                "{bad:?}: {r:?}"
            );
        }
        // A malformed hop left of a good one is not skipped either.
        let r = client(&p, "127.0.0.5", &[("x-forwarded-for", "bogus, 1.2.3.4")]);
        assert!(r.is_err());
    }

    #[test]
    fn forwarded_header_forms() {
        let p = policy(&[], &[], &["127.0.0.5/32"]);
        let ok = [
            ("for=192.0.2.60", "192.0.2.60"),
            ("For=\"192.0.2.60\";proto=https", "192.0.2.60"),
            ("for=\"[2001:db8::1]\"", "2001:db8::1"),
            (
                "for=198.51.100.1, for=\"[2001:db8:cafe::17]\";by=10.0.0.1",
                "2001:db8:cafe::17",
            ),
            ("proto=http;for=192.0.2.1;host=\"a,b\"", "192.0.2.1"),
        ];
        for (h, want) in ok {
            assert_eq!(
                client(&p, "127.0.0.5", &[("forwarded", h)]),
                Ok(ip(want)),
                "{h}"
            );
        }
        for bad in [
            "for=unknown",
            "for=_hidden",
            "for=\"[2001:db8::1]:4711\"",
            "for=\"192.0.2.60:8080\"",
            "for=[2001:db8::1]",
            "for=\"2001:db8::1\"",
            "for=010.0.0.1",
            "proto=https",
            "for=1.2.3.4;for=5.6.7.8",
            "for=1.2.3.4,",
            "for=\"1.2.3.4",
            "for=\"1.2.\\3.4\"",
            "for",
        ] {
            let r = client(&p, "127.0.0.5", &[("forwarded", bad)]);
            assert!(
                matches!(r, Err(NetworkError::MalformedForwarded(_))),
                "{bad:?}: {r:?}"
            );
        }
    }

    #[test]
    fn both_forwarded_headers_are_refused() {
        let p = policy(&[], &[], &["127.0.0.5/32"]);
        let h = [("x-forwarded-for", "1.2.3.4"), ("forwarded", "for=1.2.3.4")];
        assert_eq!(
            client(&p, "127.0.0.5", &h),
            Err(NetworkError::AmbiguousForwarded)
        );
    }

    #[test]
    fn proxy_protocol_peers_are_matched_canonically() {
        let p = NetworkPolicy::compile(&NetworkConfig {
            proxy_protocol: nets(&["127.0.0.7/32"]),
            ..NetworkConfig::default()
        });
        assert!(p.requires_proxy_header(ip("127.0.0.7")));
        assert!(p.requires_proxy_header(ip("::ffff:127.0.0.7")));
        assert!(!p.requires_proxy_header(ip("127.0.0.8")));
    }
}
