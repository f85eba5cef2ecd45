//! Strict parsing of the addresses and CIDR ranges in `[network]`, shared by config validation,
//! the admin API (list changes are validated with the same rules) and `bucketgate explain`.
//!
//! Strict means: exactly what a careful admin would write. Host bits set (`10.0.0.1/8`), zone ids
//! (`fe80::1%eth0`), leading zeros, octal or hex octets (`010.0.0.1`, `0x7f.0.0.1`), shortened IPv4
//! (`127.1`), whitespace and IPv4-mapped IPv6 ranges (`::ffff:10.0.0.0/104`) are refused with a
//! message saying what to write instead. A bare address is a host route (`/32`, `/128`).

use std::net::IpAddr;

use ipnet::IpNet;

/// Why a CIDR string was refused. `Display` says what is wrong and how to fix it; it is used
/// verbatim in config errors and admin API responses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CidrError {
    #[error("is empty; write a range such as \"10.0.0.0/8\" or \"2001:db8::/32\"")]
    Empty,
    #[error("`{0}` has a zone id (`%...`); zone ids are not allowed, write the address without it")]
    ZoneId(String),
    #[error(
        "`{0}` is not an IP address; write IPv4 as four decimal octets without leading zeros \
         (\"10.0.0.0/8\") or IPv6 in standard form (\"2001:db8::/32\"); host names, octal, hex \
         and shortened forms are not accepted"
    )]
    BadAddress(String),
    #[error(
        "`{0}` has an invalid prefix length; write /0 to /32 for IPv4 or /0 to /128 for IPv6, in \
         decimal without leading zeros"
    )]
    BadPrefix(String),
    #[error("`{given}` has host bits set after the prefix; write \"{suggest}\"")]
    HostBits { given: String, suggest: String },
    #[error(
        "`{given}` is an IPv4-mapped IPv6 range; write the IPv4 form \"{suggest}\" (mapped \
         clients are matched as IPv4)"
    )]
    Ipv4Mapped { given: String, suggest: String },
}

/// Parse one address strictly (no zone id, no leading zeros in IPv4 octets, no shortened forms).
pub fn parse_ip(text: &str) -> Option<IpAddr> {
    // std's parser already refuses leading zeros, octal, hex, shortened IPv4 and zone ids.
    text.parse::<IpAddr>().ok()
}

/// Parse one CIDR (`10.0.0.0/8`, `2001:db8::/32`) or bare address (a host route) strictly.
pub fn parse_cidr(text: &str) -> Result<IpNet, CidrError> {
    if text.is_empty() {
        return Err(CidrError::Empty);
    }
    let (addr_text, prefix_text) = match text.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (text, None),
    };
    if addr_text.contains('%') {
        return Err(CidrError::ZoneId(text.to_owned()));
    }
    let addr = parse_ip(addr_text).ok_or_else(|| CidrError::BadAddress(text.to_owned()))?;
    let max = match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    };
    let prefix = match prefix_text {
        None => max,
        Some(p) => {
            let digits_ok = !p.is_empty()
                && p.len() <= 3
                && p.bytes().all(|b| b.is_ascii_digit())
                && !(p.len() > 1 && p.starts_with('0'));
            match p.parse::<u8>() {
                Ok(n) if digits_ok && n <= max => n,
                _ => return Err(CidrError::BadPrefix(text.to_owned())),
            }
        }
    };
    let net = IpNet::new(addr, prefix).map_err(|_| CidrError::BadPrefix(text.to_owned()))?;
    if let IpAddr::V6(v6) = addr
        && let Some(v4) = v6.to_ipv4_mapped()
        && prefix >= 96
    {
        let suggest = IpNet::new(IpAddr::V4(v4), prefix - 96)
            .map(|n| n.trunc().to_string())
            .unwrap_or_default();
        return Err(CidrError::Ipv4Mapped {
            given: text.to_owned(),
            suggest,
        });
    }
    if net.trunc() != net {
        return Err(CidrError::HostBits {
            given: text.to_owned(),
            suggest: net.trunc().to_string(),
        });
    }
    Ok(net)
}

/// Whether `net` lets in every address of its family (`0.0.0.0/0`, `::/0`): worth a warning.
pub fn is_whole_family(net: &IpNet) -> bool {
    net.prefix_len() == 0
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn accepts_canonical_ranges_and_bare_hosts() {
        assert_eq!(parse_cidr("10.0.0.0/8").unwrap().to_string(), "10.0.0.0/8");
        assert_eq!(
            parse_cidr("2001:db8::/32").unwrap().to_string(),
            "2001:db8::/32"
        );
        assert_eq!(parse_cidr("127.0.0.1").unwrap().to_string(), "127.0.0.1/32");
        assert_eq!(parse_cidr("::1").unwrap().to_string(), "::1/128");
        assert_eq!(parse_cidr("0.0.0.0/0").unwrap().to_string(), "0.0.0.0/0");
        assert!(is_whole_family(&parse_cidr("::/0").unwrap()));
    }

    #[test]
    fn host_bits_are_refused_with_the_fixed_range() {
        let err = parse_cidr("10.0.0.1/8").unwrap_err();
        assert!(err.to_string().contains("\"10.0.0.0/8\""), "{err}");
        let err = parse_cidr("2001:db8::1/32").unwrap_err();
        assert!(err.to_string().contains("\"2001:db8::/32\""), "{err}");
    }

    #[test]
    fn odd_address_forms_are_refused() {
        for bad in [
            "010.0.0.0/8",
            "0x7f.0.0.0/8",
            "127.1",
            "10.0.0.0/08",
            "10.0.0.0/33",
            "::/129",
            "10.0.0.0/",
            " 10.0.0.0/8",
            "10.0.0.0/8 ",
            "localhost",
            "[::1]",
            "10.0.0.0/+8",
        ] {
            assert!(parse_cidr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn zone_ids_are_refused() {
        assert!(matches!(
            parse_cidr("fe80::1%eth0"),
            Err(CidrError::ZoneId(_))
        ));
        assert!(matches!(
            parse_cidr("fe80::%1/64"),
            Err(CidrError::ZoneId(_))
        ));
    }

    #[test]
    fn ipv4_mapped_ranges_are_refused_with_the_ipv4_form() {
        let err = parse_cidr("::ffff:10.0.0.0/104").unwrap_err();
        assert!(err.to_string().contains("\"10.0.0.0/8\""), "{err}");
        let err = parse_cidr("::ffff:127.0.0.1").unwrap_err();
        assert!(err.to_string().contains("\"127.0.0.1/32\""), "{err}");
    }

    #[test]
    fn nat64_and_ipv4_compatible_ranges_are_plain_ipv6() {
        assert_eq!(
            parse_cidr("64:ff9b::/96").unwrap().to_string(),
            "64:ff9b::/96"
        );
        assert!(parse_cidr("::a00:0/104").is_ok());
    }
}
