//! PROXY protocol v1 (text) and v2 (binary) headers, read before TLS from the peers listed in
//! `network.proxy_protocol` and from nobody else (never auto-detected: a header from any other
//! peer reaches the TLS handshake as garbage and fails it).
//!
//! The reader takes exactly the header's bytes off the socket and nothing more, so the TLS
//! ClientHello that follows is left for the acceptor. The caller bounds the read with
//! `network.proxy_protocol_timeout`. Spec: haproxy's `doc/proxy-protocol.txt`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

/// The v2 signature.
const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// The longest v1 line the spec allows, CRLF included.
const V1_MAX_BYTES: usize = 107;
/// The most bytes after a v2 header's fixed part we accept (addresses plus TLVs).
const V2_MAX_PAYLOAD_BYTES: usize = 2048;

/// What a header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// v2 LOCAL, or v1 UNKNOWN: the connection is the proxy's own (health checks); use the
    /// socket address.
    Local,
    /// The original client's address.
    Proxied { source: SocketAddr },
}

#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("reading the PROXY header")]
    Io(#[from] std::io::Error),
    #[error("no PROXY protocol header")]
    Missing,
    #[error("malformed PROXY v1 header: {0}")]
    BadV1(&'static str),
    #[error("malformed PROXY v2 header: {0}")]
    BadV2(&'static str),
}

/// Read one v1 or v2 header from `io`, consuming exactly its bytes.
pub async fn read_header<R: AsyncRead + Unpin>(io: &mut R) -> Result<ProxyHeader, ProxyError> {
    let mut start = [0u8; 5];
    io.read_exact(&mut start).await?;
    if &start == b"PROXY" {
        // Byte by byte: reading further could swallow the start of the TLS handshake.
        let mut line = start.to_vec();
        loop {
            if line.len() >= V1_MAX_BYTES {
                return Err(ProxyError::BadV1("longer than 107 bytes"));
            }
            let b = io.read_u8().await?;
            line.push(b);
            if line.ends_with(b"\r\n") {
                return parse_v1(&line);
            }
        }
    }
    if start[..] != V2_SIGNATURE[..5] {
        return Err(ProxyError::Missing);
    }
    let mut fixed = [0u8; 16];
    fixed[..5].copy_from_slice(&start);
    io.read_exact(&mut fixed[5..]).await?;
    if fixed[..12] != V2_SIGNATURE {
        return Err(ProxyError::Missing);
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > V2_MAX_PAYLOAD_BYTES {
        return Err(ProxyError::BadV2("payload too long"));
    }
    let mut payload = vec![0u8; len];
    io.read_exact(&mut payload).await?;
    parse_v2(fixed[12], fixed[13], &payload)
}

/// `PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n`, `PROXY TCP6 ...`, `PROXY UNKNOWN...\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let bad = ProxyError::BadV1;
    let text = line
        .strip_suffix(b"\r\n")
        .ok_or(bad("no CRLF at the end"))?;
    let text = std::str::from_utf8(text).map_err(|_| bad("not ASCII"))?;
    if text.bytes().any(|b| b == b'\r' || b == b'\n') {
        return Err(bad("stray CR or LF"));
    }
    let mut fields = text.split(' ');
    if fields.next() != Some("PROXY") {
        return Err(bad("does not start with `PROXY `"));
    }
    let family = fields.next().ok_or(bad("no protocol family"))?;
    if family == "UNKNOWN" {
        return Ok(ProxyHeader::Local);
    }
    let (src, dst, sport, dport) = match (
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
        fields.next(),
    ) {
        (Some(a), Some(b), Some(c), Some(d), None) => (a, b, c, d),
        _ => return Err(bad("expected 4 fields after the family, single-spaced")),
    };
    let addr = |s: &str| -> Result<IpAddr, ProxyError> {
        match family {
            "TCP4" => s.parse::<Ipv4Addr>().map(IpAddr::V4),
            "TCP6" => s.parse::<Ipv6Addr>().map(IpAddr::V6),
            _ => return Err(bad("family is not TCP4, TCP6 or UNKNOWN")),
        }
        .map_err(|_| bad("address does not match the family"))
    };
    let src = addr(src)?;
    addr(dst)?;
    let port = |s: &str| -> Result<u16, ProxyError> {
        let plain = !s.is_empty()
            && s.bytes().all(|b| b.is_ascii_digit())
            && !(s.len() > 1 && s.starts_with('0'));
        s.parse::<u16>()
            .ok()
            .filter(|_| plain)
            .ok_or(bad("port is not a decimal number 0-65535"))
    };
    let sport = port(sport)?;
    port(dport)?;
    Ok(ProxyHeader::Proxied {
        source: SocketAddr::new(src, sport),
    })
}

/// The part after the 12-byte signature: version/command, family/transport, and the payload.
pub fn parse_v2(ver_cmd: u8, family: u8, payload: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let bad = ProxyError::BadV2;
    if ver_cmd >> 4 != 2 {
        return Err(bad("version is not 2"));
    }
    match ver_cmd & 0x0f {
        // LOCAL: addresses (if any) are to be ignored.
        0 => return Ok(ProxyHeader::Local),
        1 => {}
        _ => return Err(bad("command is neither LOCAL nor PROXY")),
    }
    match family {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
        0x11 => {
            let a = payload
                .get(..12)
                .ok_or(bad("IPv4 address block too short"))?;
            let ip = Ipv4Addr::new(a[0], a[1], a[2], a[3]);
            let port = u16::from_be_bytes([a[8], a[9]]);
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(IpAddr::V4(ip), port),
            })
        }
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
        0x21 => {
            let a = payload
                .get(..36)
                .ok_or(bad("IPv6 address block too short"))?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&a[..16]);
            let port = u16::from_be_bytes([a[32], a[33]]);
            Ok(ProxyHeader::Proxied {
                source: SocketAddr::new(IpAddr::V6(Ipv6Addr::from(octets)), port),
            })
        }
        _ => Err(bad("PROXY command with a family other than TCP4/TCP6")),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn sa(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn v1_tcp4_and_tcp6_give_the_source_address() {
        assert_eq!(
            parse_v1(b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n").unwrap(),
            ProxyHeader::Proxied {
                source: sa("192.0.2.1:51234")
            }
        );
        assert_eq!(
            parse_v1(b"PROXY TCP6 2001:db8::1 2001:db8::2 1 443\r\n").unwrap(),
            ProxyHeader::Proxied {
                source: sa("[2001:db8::1]:1")
            }
        );
        assert_eq!(parse_v1(b"PROXY UNKNOWN\r\n").unwrap(), ProxyHeader::Local);
    }

    #[test]
    fn v1_malformed_lines_are_refused() {
        for bad in [
            &b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\n"[..],
            b"PROXY TCP4 192.0.2.1 198.51.100.2 51234\r\n",
            b"PROXY TCP4  192.0.2.1 198.51.100.2 51234 443\r\n",
            b"PROXY TCP4 2001:db8::1 198.51.100.2 51234 443\r\n",
            b"PROXY TCP6 192.0.2.1 198.51.100.2 51234 443\r\n",
            b"PROXY TCP4 192.0.2.01 198.51.100.2 51234 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 051234 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 70000 443\r\n",
            b"PROXY UDP4 192.0.2.1 198.51.100.2 1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 443 extra\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn v2_proxy_local_and_bad_forms() {
        let mut v4 = vec![192, 0, 2, 1, 198, 51, 100, 2];
        v4.extend_from_slice(&51234u16.to_be_bytes());
        v4.extend_from_slice(&443u16.to_be_bytes());
        assert_eq!(
            parse_v2(0x21, 0x11, &v4).unwrap(),
            ProxyHeader::Proxied {
                source: sa("192.0.2.1:51234")
            }
        );
        assert_eq!(parse_v2(0x20, 0x00, &[]).unwrap(), ProxyHeader::Local);
        assert!(
            parse_v2(0x11, 0x11, &v4).is_err(),
            "version 1 in a v2 header"
        );
        assert!(parse_v2(0x22, 0x11, &v4).is_err(), "unknown command");
        assert!(parse_v2(0x21, 0x11, &v4[..11]).is_err(), "short block");
        assert!(parse_v2(0x21, 0x12, &v4).is_err(), "UDP");
        assert!(parse_v2(0x21, 0x31, &v4).is_err(), "unix socket");
    }

    #[tokio::test]
    async fn reader_consumes_exactly_the_header() {
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.2 5 443\r\n\x16\x03\x01";
        let h = read_header(&mut input).await.unwrap();
        assert_eq!(
            h,
            ProxyHeader::Proxied {
                source: sa("192.0.2.1:5")
            }
        );
        assert_eq!(input, b"\x16\x03\x01");

        let mut v2 = V2_SIGNATURE.to_vec();
        v2.extend_from_slice(&[0x21, 0x21, 0, 36 + 3]);
        v2.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8]);
        v2.extend_from_slice(&[0; 12]);
        v2.extend_from_slice(&[0; 16]);
        v2.extend_from_slice(&9u16.to_be_bytes());
        v2.extend_from_slice(&443u16.to_be_bytes());
        v2.extend_from_slice(&[0x04, 0, 0]); // a NOOP TLV
        v2.extend_from_slice(b"\x16\x03");
        let mut input: &[u8] = &v2;
        let h = read_header(&mut input).await.unwrap();
        assert_eq!(
            h,
            ProxyHeader::Proxied {
                source: sa("[2001:db8::]:9")
            }
        );
        assert_eq!(input, b"\x16\x03");
    }

    #[tokio::test]
    async fn reader_refuses_a_tls_hello_and_an_endless_v1_line() {
        let mut input: &[u8] = b"\x16\x03\x01\x02\x00\x01";
        assert!(matches!(
            read_header(&mut input).await,
            Err(ProxyError::Missing)
        ));
        let long = [b"PROXY ".as_slice(), &[b'A'; 200]].concat();
        let mut input: &[u8] = &long;
        assert!(matches!(
            read_header(&mut input).await,
            Err(ProxyError::BadV1(_))
        ));
    }
}
