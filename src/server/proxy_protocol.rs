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

/// CRC-32C (Castagnoli, reflected polynomial 0x82F63B78), bit by bit: a header is short.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82f6_3b78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// `PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\n`, `PROXY TCP6 ...`, `PROXY UNKNOWN...\r\n`.
pub fn parse_v1(line: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let bad = ProxyError::BadV1;
    let text = line
        .strip_suffix(b"\r\n")
        .ok_or(bad("no CRLF at the end"))?;
    if !text.is_ascii() {
        return Err(bad("not ASCII"));
    }
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

/// The part after the 12-byte signature: version/command, family/transport, and the payload
/// (exactly the bytes the header's length field announced).
///
/// Every length is checked against its container before anything inside is read: the address
/// block against the family (12 bytes for IPv4, 36 for IPv6, 216 for UNIX) and the payload, each
/// TLV against what is left of the payload, and the sub-TLVs of a PP2_TYPE_SSL against that TLV.
/// The TLVs must fill the payload exactly. Version, command, family and transport must be values
/// the spec defines, for LOCAL too.
pub fn parse_v2(ver_cmd: u8, family: u8, payload: &[u8]) -> Result<ProxyHeader, ProxyError> {
    let bad = ProxyError::BadV2;
    if ver_cmd >> 4 != 2 {
        return Err(bad("version is not 2"));
    }
    let local = match ver_cmd & 0x0f {
        // LOCAL: the proxy's own connection; its addresses (if any) are ignored.
        0 => true,
        1 => false,
        _ => return Err(bad("command is neither LOCAL nor PROXY")),
    };
    if family & 0x0f > 2 {
        return Err(bad("transport is not UNSPEC, STREAM or DGRAM"));
    }
    let block_len = match family >> 4 {
        0 => 0,
        1 => 12,
        2 => 36,
        3 => 216,
        _ => return Err(bad("address family is not UNSPEC, INET, INET6 or UNIX")),
    };
    let (block, tlvs) = payload
        .split_at_checked(block_len)
        .ok_or(bad("address block shorter than its family needs"))?;
    check_tlvs(ver_cmd, family, payload, tlvs)?;
    if local {
        return Ok(ProxyHeader::Local);
    }
    // PROXY needs a TCP client address; UDP, UNIX and UNSPEC carry none we could check.
    let source = match (family, block) {
        // TCP over IPv4: src(4) dst(4) sport(2) dport(2).
        (0x11, &[a, b, c, d, _, _, _, _, p0, p1, _, _]) => SocketAddr::new(
            IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
            u16::from_be_bytes([p0, p1]),
        ),
        // TCP over IPv6: src(16) dst(16) sport(2) dport(2).
        (0x21, block) => {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(block.get(..16).ok_or(bad("IPv6 address block too short"))?);
            let port = block
                .get(32..34)
                .ok_or(bad("IPv6 address block too short"))?;
            SocketAddr::new(
                IpAddr::V6(Ipv6Addr::from(octets)),
                u16::from_be_bytes([port[0], port[1]]),
            )
        }
        _ => return Err(bad("PROXY command with a family other than TCP4/TCP6")),
    };
    Ok(ProxyHeader::Proxied { source })
}

/// TLV types whose contents are checked (doc/proxy-protocol.txt 2.2).
const PP2_TYPE_CRC32C: u8 = 0x03;
const PP2_TYPE_UNIQUE_ID: u8 = 0x05;
const PP2_TYPE_SSL: u8 = 0x20;
/// The longest PP2_TYPE_UNIQUE_ID value the spec allows.
const UNIQUE_ID_MAX_BYTES: usize = 128;

/// The TLVs after the address block: each fits, together they fill the payload exactly, an SSL
/// TLV's sub-TLVs fill it exactly, and a CRC32C TLV matches the header.
fn check_tlvs(ver_cmd: u8, family: u8, payload: &[u8], tlvs: &[u8]) -> Result<(), ProxyError> {
    let bad = ProxyError::BadV2;
    let mut crc_at = None;
    for_each_tlv(tlvs, |kind, offset, value| {
        match kind {
            PP2_TYPE_CRC32C if value.len() != 4 || crc_at.is_some() => {
                return Err(bad("CRC32C TLV is not one 4-byte value"));
            }
            PP2_TYPE_CRC32C => crc_at = Some(payload.len() - tlvs.len() + offset),
            PP2_TYPE_UNIQUE_ID if value.len() > UNIQUE_ID_MAX_BYTES => {
                return Err(bad("UNIQUE_ID TLV longer than 128 bytes"));
            }
            PP2_TYPE_SSL => {
                // client (1 byte), verify (4 bytes), then sub-TLVs.
                let subs = value
                    .get(5..)
                    .ok_or(bad("SSL TLV shorter than its fixed part"))?;
                for_each_tlv(subs, |_, _, _| Ok(()))?;
            }
            _ => {}
        }
        Ok(())
    })?;
    if let Some(at) = crc_at {
        // The checksum covers the whole header with the CRC32C value itself zeroed.
        let len = u16::try_from(payload.len()).map_err(|_| bad("payload too long"))?;
        let mut header = Vec::with_capacity(16 + payload.len());
        header.extend_from_slice(&V2_SIGNATURE);
        header.extend_from_slice(&[ver_cmd, family]);
        header.extend_from_slice(&len.to_be_bytes());
        let start = header.len();
        header.extend_from_slice(payload);
        let value = header
            .get_mut(start + at..start + at + 4)
            .ok_or(bad("CRC32C TLV out of place"))?;
        let sent = u32::from_be_bytes([value[0], value[1], value[2], value[3]]);
        value.fill(0);
        if crc32c(&header) != sent {
            return Err(bad("CRC32C does not match the header"));
        }
    }
    Ok(())
}

/// Walk `type(1) length(2) value(length)` records that must fill `bytes` exactly; `f` gets the
/// type, the value's offset in `bytes`, and the value.
fn for_each_tlv(
    bytes: &[u8],
    mut f: impl FnMut(u8, usize, &[u8]) -> Result<(), ProxyError>,
) -> Result<(), ProxyError> {
    let mut at = 0;
    while at < bytes.len() {
        let Some(&[kind, l0, l1]) = bytes.get(at..at + 3) else {
            return Err(ProxyError::BadV2("TLV header cut short"));
        };
        let start = at + 3;
        let end = start + usize::from(u16::from_be_bytes([l0, l1]));
        let value = bytes.get(start..end).ok_or(ProxyError::BadV2(
            "TLV longer than what is left of its container",
        ))?;
        f(kind, start, value)?;
        at = end;
    }
    Ok(())
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

    /// A TCP-over-IPv4 address block: 192.0.2.1:51234 -> 198.51.100.2:443.
    fn tcp4_block() -> Vec<u8> {
        let mut a = vec![192, 0, 2, 1, 198, 51, 100, 2];
        a.extend_from_slice(&51234u16.to_be_bytes());
        a.extend_from_slice(&443u16.to_be_bytes());
        a
    }

    /// A whole v2 header: signature, version/command, family, length, then `payload`.
    fn v2_header(ver_cmd: u8, family: u8, payload: &[u8]) -> Vec<u8> {
        let mut h = V2_SIGNATURE.to_vec();
        h.extend_from_slice(&[ver_cmd, family]);
        h.extend_from_slice(&u16::try_from(payload.len()).unwrap().to_be_bytes());
        h.extend_from_slice(payload);
        h
    }

    #[test]
    fn v2_tlvs_must_fill_the_declared_length_exactly() {
        let proxied = ProxyHeader::Proxied {
            source: sa("192.0.2.1:51234"),
        };
        let with = |tlvs: &[u8]| parse_v2(0x21, 0x11, &[tcp4_block(), tlvs.to_vec()].concat());
        assert_eq!(with(&[]).unwrap(), proxied);
        // NOOP and AUTHORITY that fit.
        assert_eq!(
            with(&[0x04, 0, 2, 0xaa, 0xbb, 0x02, 0, 1, b'h']).unwrap(),
            proxied
        );
        for (what, tlvs) in [
            ("value longer than what is left", &[0x04, 0, 10, 1, 2][..]),
            ("value length 0xffff", &[0x04, 0xff, 0xff]),
            ("header cut after its type", &[0x04]),
            ("header cut inside its length", &[0x04, 0]),
            ("second TLV overruns", &[0x04, 0, 0, 0x01, 0, 3, b'h', b'2']),
        ] {
            assert!(
                matches!(with(tlvs), Err(ProxyError::BadV2(_))),
                "{what}: {:?}",
                with(tlvs)
            );
        }
    }

    #[test]
    fn v2_local_headers_have_their_lengths_checked_too() {
        assert_eq!(
            parse_v2(0x20, 0x00, &[0x04, 0, 1, 0]).unwrap(),
            ProxyHeader::Local
        );
        assert!(
            parse_v2(0x20, 0x00, &[0x04, 0, 5, 0]).is_err(),
            "TLV overrun"
        );
        assert_eq!(
            parse_v2(0x20, 0x11, &tcp4_block()).unwrap(),
            ProxyHeader::Local
        );
        assert!(
            parse_v2(0x20, 0x11, &tcp4_block()[..5]).is_err(),
            "IPv4 block cut short"
        );
    }

    #[test]
    fn v2_address_block_length_follows_the_family() {
        // IPv6: 36 bytes; UNIX: 216 bytes (accepted only as LOCAL: it has no client IP).
        assert!(parse_v2(0x21, 0x21, &[0; 36]).is_ok());
        assert!(parse_v2(0x21, 0x21, &[0; 35]).is_err());
        assert!(
            parse_v2(0x21, 0x21, &tcp4_block()).is_err(),
            "IPv4 block for IPv6"
        );
        assert_eq!(parse_v2(0x20, 0x31, &[0; 216]).unwrap(), ProxyHeader::Local);
        assert!(parse_v2(0x20, 0x31, &[0; 215]).is_err());
        assert!(parse_v2(0x20, 0x32, &[0; 100]).is_err());
        assert!(parse_v2(0x21, 0x31, &[0; 216]).is_err(), "PROXY over UNIX");
        // The IPv6 block, then a TLV that overruns.
        let v6 = [vec![0; 36], vec![0x04, 0, 9]].concat();
        assert!(parse_v2(0x21, 0x21, &v6).is_err());
    }

    #[test]
    fn v2_unknown_version_command_family_or_transport_is_refused() {
        let block = tcp4_block();
        for ver_cmd in [0x01, 0x11, 0x31, 0xf1, 0x00, 0x10] {
            assert!(
                parse_v2(ver_cmd, 0x11, &block).is_err(),
                "ver/cmd {ver_cmd:#04x}"
            );
        }
        for ver_cmd in [0x22, 0x23, 0x2f] {
            assert!(
                parse_v2(ver_cmd, 0x11, &block).is_err(),
                "ver/cmd {ver_cmd:#04x}"
            );
        }
        // Family nibble beyond UNIX, transport nibble beyond DGRAM: invalid even for LOCAL.
        for family in [0x41, 0xf1, 0x13, 0x1f, 0x03, 0x40] {
            assert!(
                parse_v2(0x21, family, &[0; 216]).is_err(),
                "PROXY {family:#04x}"
            );
            assert!(
                parse_v2(0x20, family, &[0; 216]).is_err(),
                "LOCAL {family:#04x}"
            );
        }
        // Valid combinations that carry no TCP client address are refused under PROXY.
        for family in [0x00, 0x01, 0x10, 0x12, 0x22, 0x20] {
            assert!(
                parse_v2(0x21, family, &[0; 36]).is_err(),
                "PROXY {family:#04x}"
            );
        }
    }

    #[test]
    fn v2_ssl_tlv_sub_tlvs_must_fit_inside_it() {
        let ssl = |value: &[u8]| {
            let mut t = vec![0x20];
            t.extend_from_slice(&u16::try_from(value.len()).unwrap().to_be_bytes());
            t.extend_from_slice(value);
            parse_v2(0x21, 0x11, &[tcp4_block(), t].concat())
        };
        // client bits, verify (4 bytes), then sub-TLVs: PP2_SUBTYPE_SSL_VERSION "1.3".
        assert!(ssl(&[0x01, 0, 0, 0, 0, 0x21, 0, 3, b'1', b'.', b'3']).is_ok());
        assert!(ssl(&[0x01, 0, 0, 0, 0]).is_ok(), "no sub-TLVs");
        assert!(
            ssl(&[0x01, 0, 0, 0]).is_err(),
            "shorter than client + verify"
        );
        assert!(
            ssl(&[0x01, 0, 0, 0, 0, 0x21, 0, 9, b'1']).is_err(),
            "sub-TLV overrun"
        );
        assert!(
            ssl(&[0x01, 0, 0, 0, 0, 0x21]).is_err(),
            "sub-TLV header cut"
        );
    }

    #[test]
    fn v2_crc32c_tlv_is_checked_when_present() {
        // RFC 3720 check value of CRC-32C.
        assert_eq!(crc32c(b"123456789"), 0xe306_9283);
        let mut payload = [tcp4_block(), vec![0x03, 0, 4, 0, 0, 0, 0]].concat();
        let header = v2_header(0x21, 0x11, &payload);
        let crc = crc32c(&header);
        let n = payload.len();
        payload[n - 4..].copy_from_slice(&crc.to_be_bytes());
        assert!(parse_v2(0x21, 0x11, &payload).is_ok());
        payload[n - 1] ^= 1;
        assert!(parse_v2(0x21, 0x11, &payload).is_err(), "wrong checksum");
        let short = [tcp4_block(), vec![0x03, 0, 3, 0, 0, 0]].concat();
        assert!(parse_v2(0x21, 0x11, &short).is_err(), "checksum of 3 bytes");
    }

    #[test]
    fn v1_edge_lines() {
        // The longest line the spec allows (107 bytes with CRLF) is read; one byte more is not.
        let max = b"PROXY UNKNOWN ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff \
            ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff 65535 65535\r\n";
        assert_eq!(max.len(), 107);
        assert_eq!(parse_v1(max).unwrap(), ProxyHeader::Local);
        assert_eq!(
            parse_v1(b"PROXY UNKNOWN anything at all\r\n").unwrap(),
            ProxyHeader::Local
        );
        for bad in [
            &b"PROXY UNKNOWN \xc3\xa9\r\n"[..],
            b"PROXY\r\n",
            b"PROXY \r\n",
            b"PROXY unknown\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443\r\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 51234 443 \r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 +1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 -1 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 65536 443\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2 1 0x1bb\r\n",
            b"PROXY TCP4 192.0.2.1 198.51.100.2  443\r\n",
            b"PROXY TCP4 192.0.2.1/32 198.51.100.2 1 443\r\n",
            b"PROXY TCP4 192.0.2.1\t198.51.100.2 1 443\r\n",
        ] {
            assert!(parse_v1(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[tokio::test]
    async fn reader_refuses_v1_lines_over_107_bytes_or_without_crlf() {
        let long = [&b"PROXY UNKNOWN "[..], &[b'f'; 91], b"\r\n"].concat();
        assert_eq!(long.len(), 107);
        let mut input: &[u8] = &long;
        assert_eq!(read_header(&mut input).await.unwrap(), ProxyHeader::Local);
        let longer = [&b"PROXY UNKNOWN "[..], &[b'f'; 92], b"\r\n"].concat();
        let mut input: &[u8] = &longer;
        assert!(matches!(
            read_header(&mut input).await,
            Err(ProxyError::BadV1(_))
        ));
        // LF alone does not end the line: the reader goes on and the peer's EOF ends it.
        let mut input: &[u8] = b"PROXY TCP4 192.0.2.1 198.51.100.2 1 443\n";
        assert!(read_header(&mut input).await.is_err());
    }

    #[tokio::test]
    async fn reader_refuses_a_v2_header_the_peer_cut_short_or_overran() {
        // Declares 12 + 20 bytes, sends 12, then closes.
        let mut cut = v2_header(0x21, 0x11, &[tcp4_block(), vec![0; 20]].concat());
        cut.truncate(16 + 12);
        let mut input: &[u8] = &cut;
        assert!(matches!(
            read_header(&mut input).await,
            Err(ProxyError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof
        ));
        // A TLV that claims more than the header holds: refused, and nothing past the
        // declared length is read.
        let mut overrun = v2_header(0x21, 0x11, &[tcp4_block(), vec![0x04, 0, 200]].concat());
        overrun.extend_from_slice(b"\x16\x03\x01");
        let mut input: &[u8] = &overrun;
        assert!(matches!(
            read_header(&mut input).await,
            Err(ProxyError::BadV2(_))
        ));
        assert_eq!(input, b"\x16\x03\x01");
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
