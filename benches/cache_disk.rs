#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Criterion bench for a disk-tier hit: `DiskTier::get` of a 1 MiB entry (read, authenticate,
//! decrypt on a blocking thread), encrypted and in the clear, beside the fs source reading the
//! same number of bytes from a file (head + get + every body frame), both from the page cache.
//! The target: a disk hit at least 0.9x the fs source.

use std::hint::black_box;
use std::sync::Arc;

use bucketgate::backend::fs::FsBackend;
use bucketgate::backend::{Backend, Caller};
use bucketgate::cache::disk::{DiskKey, DiskTier};
use bucketgate::config::{DiskCacheConfig, DiskEncryption};
use bucketgate::telemetry::Metrics;
use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use futures_util::StreamExt;

const SIZE: usize = 1 << 20;

fn disk_hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    let data: Bytes = (0..SIZE).map(|i| (i % 251) as u8).collect();
    let mut g = c.benchmark_group("cache_disk");
    g.throughput(Throughput::Bytes(SIZE as u64));

    for (label, encryption) in [
        (
            "get_1m_aes256gcm",
            DiskEncryption::Aes256Gcm {
                key_id: "bench".into(),
                key: [42; 32],
            },
        ),
        ("get_1m_clear", DiskEncryption::Off),
    ] {
        let tier = DiskTier::open(
            &DiskCacheConfig {
                dir: dir.path().join(label),
                max_bytes: 64 << 20,
                encryption,
            },
            Arc::new(Metrics::new()),
        )
        .expect("open");
        let id = DiskKey {
            source: "local",
            key: b"video/frame.bin",
            id: b"local|video/frame.bin|etag|orig|-|0",
        };
        rt.block_on(async {
            tier.put(&id, data.clone());
            tier.flush().await;
            assert_eq!(tier.get(&id).await.expect("stored").len(), SIZE);
        });
        g.bench_function(label, |b| {
            b.to_async(&rt).iter(|| async {
                let bytes = tier.get(black_box(&id)).await.expect("hit");
                assert_eq!(bytes.len(), SIZE);
            })
        });
    }

    let root = dir.path().join("fs");
    std::fs::create_dir(&root).expect("fs root");
    std::fs::write(root.join("frame.bin"), &data).expect("object");
    let fs = FsBackend::new(&root).expect("fs backend");
    g.bench_function("fs_source_1m", |b| {
        b.to_async(&rt).iter(|| async {
            let meta = fs.head("frame.bin", Caller::Gateway).await.expect("head");
            let mut body = fs
                .get("frame.bin", None, &meta, Caller::Gateway)
                .await
                .expect("get")
                .body;
            let mut n = 0;
            while let Some(frame) = body.next().await {
                n += black_box(frame.expect("frame")).len();
            }
            assert_eq!(n, SIZE);
        })
    });
    g.finish();
}

criterion_group!(benches, disk_hit);
criterion_main!(benches);
