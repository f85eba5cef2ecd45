#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The network decision (stage 1) with 10,000 mixed IPv4/IPv6 rules: target < 200 ns per
//! decision. Rules are generated deterministically; lookups hit allow rules, deny rules and
//! misses in both families.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bucketgate::config::{NetworkConfig, SourceLists};
use bucketgate::pipeline::network::NetworkPolicy;
use criterion::{Criterion, criterion_group, criterion_main};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

/// xorshift64*: deterministic pseudo-random numbers without a dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn rules(rng: &mut Rng, n: usize) -> Vec<IpNet> {
    (0..n)
        .map(|i| {
            if i % 2 == 0 {
                let len = 16 + (rng.next() % 17) as u8;
                let addr = Ipv4Addr::from(rng.next() as u32);
                IpNet::V4(Ipv4Net::new(addr, len).unwrap().trunc())
            } else {
                let len = 32 + (rng.next() % 97) as u8;
                let addr = Ipv6Addr::from(
                    (0x2001_0db8_u128 << 96)
                        | (u128::from(rng.next()) << 32)
                        | u128::from(rng.next() as u32),
                );
                IpNet::V6(Ipv6Net::new(addr, len).unwrap().trunc())
            }
        })
        .collect()
}

fn decision(c: &mut Criterion) {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let allow = rules(&mut rng, 9_000);
    let deny = rules(&mut rng, 1_000);
    let mut sources = BTreeMap::new();
    sources.insert(
        "photos".to_string(),
        SourceLists {
            allow: Some(allow[..500].to_vec()),
            deny: deny[..100].to_vec(),
        },
    );
    let policy = NetworkPolicy::compile(&NetworkConfig {
        allow: allow.clone(),
        deny: deny.clone(),
        sources,
        ..NetworkConfig::default()
    });
    // A mix: addresses inside allow rules, inside deny rules, and random misses, both families.
    let mut probes: Vec<IpAddr> = Vec::new();
    for net in allow.iter().step_by(37).chain(deny.iter().step_by(11)) {
        probes.push(net.network());
        probes.push(net.broadcast());
    }
    for _ in 0..500 {
        probes.push(IpAddr::V4(Ipv4Addr::from(rng.next() as u32)));
        probes.push(IpAddr::V6(Ipv6Addr::from(
            (0x2001_0db8_u128 << 96) | u128::from(rng.next()),
        )));
    }
    let mut g = c.benchmark_group("network");
    g.bench_function("decide/10k_rules_global", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(policy.decide(black_box(probes[i]), None))
        })
    });
    g.bench_function("decide/10k_rules_with_source", |b| {
        let mut i = 0;
        b.iter(|| {
            i = (i + 1) % probes.len();
            black_box(policy.decide(black_box(probes[i]), Some("photos")))
        })
    });
    g.bench_function("compile/10k_rules", |b| {
        let config = NetworkConfig {
            allow: allow.clone(),
            deny: deny.clone(),
            ..NetworkConfig::default()
        };
        b.iter(|| black_box(NetworkPolicy::compile(&config)))
    });
    g.finish();
}

criterion_group!(benches, decision);
criterion_main!(benches);
