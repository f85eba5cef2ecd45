//! `[network]` and `[network.sources.NAME]`: the allow/deny lists, trusted proxies and the
//! PROXY protocol timeout — a child of `validate/mod.rs`, so it shares the [`Checker`].

use std::collections::BTreeMap;
use std::time::Duration;

use toml::Spanned;

use super::super::defaults as d;
use super::super::file::RawSource;
use super::super::file::{RawCidrList, RawNetwork};
use super::super::{NetworkConfig, SourceLists};
use super::{Checker, dotted};

impl Checker<'_> {
    /// A missing `[network]` table or `allow` key is valid and denies everything (fail closed).
    pub(super) fn network(
        &mut self,
        raw: Option<&Spanned<RawNetwork>>,
        raw_sources: Option<&Spanned<BTreeMap<Spanned<String>, Spanned<RawSource>>>>,
    ) -> Option<NetworkConfig> {
        let before = self.errors.len();
        let Some(raw) = raw else {
            return Some(NetworkConfig {
                proxy_protocol_timeout: Duration::from_millis(d::PROXY_PROTOCOL_TIMEOUT_MS),
                ..NetworkConfig::default()
            });
        };
        let raw = raw.get_ref();
        let allow = self.cidrs(raw.allow.as_ref(), "network.allow");
        let deny = self.cidrs(raw.deny.as_ref(), "network.deny");
        let trusted_proxies = self.cidrs(raw.trusted_proxies.as_ref(), "network.trusted_proxies");
        let proxy_protocol = self.cidrs(raw.proxy_protocol.as_ref(), "network.proxy_protocol");
        let timeout_ms = self.limit(
            &raw.proxy_protocol_timeout_ms,
            "proxy_protocol_timeout_ms",
            d::PROXY_PROTOCOL_TIMEOUT_MS,
            1,
            d::PROXY_PROTOCOL_TIMEOUT_MS_MAX,
        );
        // `limit` names its key `limits.NAME`; this one lives in [network].
        if let Some(last) = self.errors.last_mut()
            && last.key == "limits.proxy_protocol_timeout_ms"
        {
            last.key = "network.proxy_protocol_timeout_ms".to_owned();
        }
        let mut sources = BTreeMap::new();
        if let Some(per_source) = &raw.sources {
            for (name, lists) in per_source.get_ref() {
                let key = dotted(&["network", "sources", name.get_ref().as_str()]);
                let known = raw_sources
                    .is_some_and(|s| s.get_ref().keys().any(|k| k.get_ref() == name.get_ref()));
                if !known {
                    self.push(
                        name.span(),
                        key.clone(),
                        format!(
                            "there is no source named `{}`; per-source lists apply to a                              configured [sources.NAME], fix the name or add the source",
                            name.get_ref()
                        ),
                    );
                    continue;
                }
                let lists = lists.get_ref();
                let allow = lists
                    .allow
                    .as_ref()
                    .map(|a| self.cidrs(Some(a), &format!("{key}.allow")));
                let deny = self.cidrs(lists.deny.as_ref(), &format!("{key}.deny"));
                sources.insert(name.get_ref().clone(), SourceLists { allow, deny });
            }
        }
        (self.errors.len() == before).then(|| NetworkConfig {
            allow,
            deny,
            trusted_proxies,
            proxy_protocol,
            proxy_protocol_timeout: Duration::from_millis(timeout_ms),
            sources,
        })
    }

    /// Every valid CIDR of a list; each invalid one pushes an error at its own position.
    pub(super) fn cidrs(&mut self, raw: Option<&RawCidrList>, key: &str) -> Vec<ipnet::IpNet> {
        let mut nets = Vec::new();
        for item in raw.map(|l| l.get_ref().as_slice()).unwrap_or_default() {
            match super::super::network::parse_cidr(item.get_ref()) {
                Ok(net) => nets.push(net),
                Err(e) => self.push(item.span(), key, e.to_string()),
            }
        }
        nets
    }
}
