//! The cache against a real in-process backend (an fs source in a temp dir): coalescing, ranges
//! through chunks, failed fills, purges. The gateway-level tests are in `tests/cache.rs`.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may; src/ may not

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

use super::*;
use crate::backend::fs::FsBackend;

const CHUNK: u64 = 4096;

struct Rig {
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
    cache: Arc<Cache>,
    backend: Arc<AnyBackend>,
    metrics: Arc<Metrics>,
}

fn rig(ttl: Duration) -> Rig {
    rig_with(ttl, CHUNK)
}

fn rig_with(ttl: Duration, chunk_bytes: u64) -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_owned();
    let metrics = Arc::new(Metrics::new());
    let config = CacheConfig {
        memory_bytes: 64 << 20,
        chunk_bytes,
        metadata_ttl: ttl,
        disk: None,
        bypass: BTreeSet::new(),
    };
    let cache = Arc::new(Cache::new(&config, Arc::clone(&metrics)).unwrap());
    let backend = Arc::new(AnyBackend::Fs(FsBackend::new(&root).unwrap()));
    Rig {
        _dir: dir,
        root,
        cache,
        backend,
        metrics,
    }
}

fn object(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed)
        .collect()
}

impl Rig {
    /// Replace the object as a store does: a new file renamed over the old one (a reader that
    /// opened the old one goes on reading the old bytes).
    fn write(&self, key: &str, data: &[u8]) {
        let tmp = self.root.join(format!(".{key}.tmp"));
        std::fs::write(&tmp, data).unwrap();
        std::fs::rename(&tmp, self.root.join(key)).unwrap();
    }

    fn fills(&self) -> u64 {
        self.metrics.cache_fills.get()
    }

    /// Metadata then the part, as the pipeline does; the bytes and the two outcomes.
    async fn get(
        &self,
        key: &str,
        part: Option<ByteRange>,
    ) -> Result<(Vec<u8>, Outcome, Outcome), BackendError> {
        let object = ObjectId::new("s", key, Partition::Gateway);
        let deadline = Instant::now() + Duration::from_secs(10);
        let chunk = self.cache.config().chunk_bytes;
        let first = move |_: &ObjectMeta| Some(part.map_or(0, |r| r.start / chunk));
        let (meta, meta_outcome) = self
            .cache
            .metadata(
                &object,
                &self.backend,
                Caller::Gateway,
                deadline,
                Some(0),
                first,
            )
            .await?;
        let entry = CacheKey::new(object, &version_of(&meta), key::ORIGINAL);
        let mut read = self
            .cache
            .read(
                entry,
                meta,
                part,
                Arc::clone(&self.backend),
                OwnedCaller::Gateway,
            )
            .await?;
        let mut out = Vec::new();
        while let Some(frame) = read.body.next().await {
            out.extend_from_slice(&frame?);
        }
        Ok((out, meta_outcome, read.outcome))
    }
}

fn r(start: u64, end: u64) -> Option<ByteRange> {
    Some(ByteRange { start, end })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cache_concurrent_cold_reads_make_one_fill_per_chunk_and_one_metadata_request() {
    let rig = Arc::new(rig(Duration::from_secs(60)));
    let data = object(2 * CHUNK as usize + 1000, 7);
    rig.write("big", &data);
    let tasks: Vec<_> = (0..200)
        .map(|_| {
            let rig = Arc::clone(&rig);
            tokio::spawn(async move { rig.get("big", None).await.unwrap() })
        })
        .collect();
    let mut meta_misses = 0;
    let mut body_misses = 0;
    for task in tasks {
        let (bytes, meta_outcome, outcome) = task.await.unwrap();
        assert!(bytes == data, "every response is byte-exact");
        meta_misses += usize::from(meta_outcome == Outcome::Miss);
        body_misses += usize::from(outcome == Outcome::Miss);
    }
    assert_eq!(meta_misses, 1, "one metadata request for 200 readers");
    assert_eq!(rig.fills(), 3, "one fill per chunk");
    assert!(body_misses >= 1);
    assert_eq!(rig.metrics.cache_origin_bytes.get(), data.len() as u64);
    assert_eq!(rig.cache.stats().inflight_fills, 0);
    assert_eq!(rig.cache.stats().memory_entries, 3);
}

#[tokio::test]
async fn cache_ranges_fetch_only_missing_chunks_and_warm_reads_are_memory_hits() {
    let rig = rig(Duration::from_secs(60));
    let size = 3 * CHUNK + 500; // the last chunk is partial
    let data = object(size as usize, 3);
    rig.write("v", &data);
    let slice = |a: u64, b: u64| data[a as usize..=b as usize].to_vec();

    // The middle chunk only: the cold open brings it with the metadata, one origin request.
    let (bytes, meta_outcome, _) = rig.get("v", r(CHUNK + 10, CHUNK + 20)).await.unwrap();
    assert_eq!(bytes, slice(CHUNK + 10, CHUNK + 20));
    assert_eq!((meta_outcome, rig.fills()), (Outcome::Miss, 1));
    // Spanning chunks 0..=1: only chunk 0 is fetched.
    let (bytes, _, _) = rig.get("v", r(CHUNK - 5, CHUNK + 5)).await.unwrap();
    assert_eq!(bytes, slice(CHUNK - 5, CHUNK + 5));
    assert_eq!(rig.fills(), 2);
    // The last, partial chunk.
    let (bytes, _, _) = rig.get("v", r(size - 3, size - 1)).await.unwrap();
    assert_eq!(bytes, slice(size - 3, size - 1));
    assert_eq!(rig.fills(), 3);
    // The whole object: only chunk 2 was missing.
    let (bytes, meta_outcome, outcome) = rig.get("v", None).await.unwrap();
    assert_eq!(bytes, data);
    assert_eq!(
        (meta_outcome, outcome, rig.fills()),
        (Outcome::HitMemory, Outcome::Miss, 4)
    );
    // Warm: every shape from memory, no fill.
    for (a, b) in [
        (0, size - 1),
        (0, 0),
        (CHUNK - 1, CHUNK),
        (CHUNK, 2 * CHUNK - 1),
        (2 * CHUNK + 7, size - 1),
        (size - 1, size - 1),
    ] {
        let (bytes, meta_outcome, outcome) = rig.get("v", r(a, b)).await.unwrap();
        assert_eq!(bytes, slice(a, b), "{a}-{b}");
        assert_eq!(
            (meta_outcome, outcome),
            (Outcome::HitMemory, Outcome::HitMemory)
        );
    }
    assert_eq!(rig.fills(), 4);
}

#[tokio::test]
async fn cache_fill_of_a_changed_object_aborts_the_body_stores_nothing_and_forgets_the_metadata() {
    let rig = rig(Duration::from_secs(60));
    let old = object(5000, 1); // two chunks
    rig.write("c", &old);
    let object_id = ObjectId::new("s", "c", Partition::Gateway);
    let deadline = Instant::now() + Duration::from_secs(10);
    // The cold open brings chunk 0 of the old version with the metadata.
    let (meta, _) = rig
        .cache
        .metadata(
            &object_id,
            &rig.backend,
            Caller::Gateway,
            deadline,
            Some(0),
            |_| Some(0),
        )
        .await
        .unwrap();
    // The object changes under the cache (another size: another ETag).
    rig.write("c", &object(6000, 2));
    let entry = CacheKey::new(object_id.clone(), &version_of(&meta), key::ORIGINAL);
    let mut read = rig
        .cache
        .read(
            entry,
            meta,
            None,
            Arc::clone(&rig.backend),
            OwnedCaller::Gateway,
        )
        .await
        .unwrap();
    // The old version's first chunk, then chunk 1 cannot be had in that version: the body
    // fails, never ends as if complete, and never carries new bytes.
    let mut got = Vec::new();
    let failure = loop {
        match read.body.next().await {
            Some(Ok(frame)) => got.extend_from_slice(&frame),
            Some(Err(e)) => break e,
            None => panic!("a body of a changed object ended as if complete"),
        }
    };
    assert!(matches!(failure, BackendError::Changed), "{failure:?}");
    assert_eq!(got, old[..CHUNK as usize]);
    assert_eq!(rig.metrics.cache_fill_failures.get(), 1);
    let stats = rig.cache.stats();
    assert_eq!((stats.memory_entries, stats.inflight_fills), (1, 0));
    // The next request asks the store again and gets the new version whole.
    let (bytes, meta_outcome, _) = rig.get("c", None).await.unwrap();
    assert_eq!(meta_outcome, Outcome::Miss);
    assert_eq!(bytes, object(6000, 2));
}

#[tokio::test]
async fn cache_metadata_is_revalidated_after_the_window_and_a_new_version_gets_new_entries() {
    let rig = rig(Duration::ZERO);
    rig.write("m", &object(100, 1));
    let (first, meta_outcome, _) = rig.get("m", None).await.unwrap();
    assert_eq!(meta_outcome, Outcome::Miss);
    let (_, meta_outcome, outcome) = rig.get("m", None).await.unwrap();
    assert_eq!((meta_outcome, outcome), (Outcome::Miss, Outcome::HitMemory));
    rig.write("m", &object(101, 2));
    let (second, _, outcome) = rig.get("m", None).await.unwrap();
    assert_eq!(outcome, Outcome::Miss);
    assert_ne!(first, second);
    assert_eq!(second, object(101, 2));
}

#[tokio::test]
async fn cache_purge_removes_chunks_and_metadata_of_what_it_names() {
    let rig = rig(Duration::from_secs(60));
    rig.write("a1", &object(5000, 1));
    rig.write("b1", &object(10, 2));
    rig.get("a1", None).await.unwrap();
    rig.get("b1", None).await.unwrap();
    assert_eq!(rig.cache.stats().memory_entries, 3);
    assert_eq!(
        rig.cache.purge(&Purge::Prefix {
            source: "s".into(),
            prefix: "a".into()
        }),
        2
    );
    assert_eq!(rig.cache.stats().memory_entries, 1);
    let (_, meta_outcome, outcome) = rig.get("a1", None).await.unwrap();
    assert_eq!((meta_outcome, outcome), (Outcome::Miss, Outcome::Miss));
    let (_, meta_outcome, outcome) = rig.get("b1", None).await.unwrap();
    assert_eq!(
        (meta_outcome, outcome),
        (Outcome::HitMemory, Outcome::HitMemory)
    );
    assert_eq!(rig.cache.purge(&Purge::Source("s".into())), 3);
    assert_eq!(rig.cache.stats().memory_bytes, 0);
}

#[tokio::test]
async fn cache_prewarm_reads_the_whole_object_into_memory() {
    let rig = rig(Duration::from_secs(60));
    rig.write("p", &object(9000, 4));
    let size = rig
        .cache
        .prewarm_object(&rig.backend, "s", "p")
        .await
        .unwrap();
    assert_eq!((size, rig.fills()), (9000, 3));
    let (bytes, _, outcome) = rig.get("p", None).await.unwrap();
    assert_eq!((bytes, outcome), (object(9000, 4), Outcome::HitMemory));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_fill_goes_on_for_the_others_when_its_leader_leaves() {
    let chunk = 4 << 20;
    let rig = rig_with(Duration::from_secs(60), chunk);
    let data = object(chunk as usize, 9);
    rig.write("l", &data);
    let object_id = ObjectId::new("s", "l", Partition::Gateway);
    let deadline = Instant::now() + Duration::from_secs(10);
    // Metadata only: the leader below leads the fill.
    let (meta, _) = rig
        .cache
        .metadata(
            &object_id,
            &rig.backend,
            Caller::Gateway,
            deadline,
            Some(0),
            |_| None,
        )
        .await
        .unwrap();
    let entry = CacheKey::new(object_id, &version_of(&meta), key::ORIGINAL);
    let open = || {
        rig.cache.read(
            entry.clone(),
            Arc::clone(&meta),
            None,
            Arc::clone(&rig.backend),
            OwnedCaller::Gateway,
        )
    };
    // The leader has its first bytes, then its client goes away.
    let leader = open().await.unwrap();
    assert_eq!(leader.outcome, Outcome::Miss);
    drop(leader);
    let mut other = open().await.unwrap();
    let mut got = Vec::new();
    while let Some(frame) = other.body.next().await {
        got.extend_from_slice(&frame.unwrap());
    }
    assert!(got == data, "the follower gets every byte");
    assert_eq!(rig.fills(), 1, "the leader's fill was not restarted");
    // The follower may finish before the fill has stored the chunk; either way, no new fill.
    let third = open().await.unwrap();
    assert_ne!(third.outcome, Outcome::Miss);
    assert_eq!(rig.fills(), 1);
}

/// A cache with a disk tier in `disk_dir` (the rig's store stays): a restart is dropping one and
/// building another on the same directory.
fn disk_rig(disk_dir: &std::path::Path) -> (Arc<Cache>, Arc<Metrics>) {
    let metrics = Arc::new(Metrics::new());
    let config = CacheConfig {
        memory_bytes: 64 << 20,
        chunk_bytes: CHUNK,
        metadata_ttl: Duration::from_secs(60),
        disk: Some(crate::config::DiskCacheConfig {
            dir: disk_dir.to_owned(),
            max_bytes: 64 << 20,
            encryption: crate::config::DiskEncryption::Aes256Gcm {
                key_id: "k1".to_owned(),
                key: [9; 32],
            },
        }),
        bypass: BTreeSet::new(),
    };
    let cache = Arc::new(Cache::new(&config, Arc::clone(&metrics)).unwrap());
    (cache, metrics)
}

impl Rig {
    /// Stop this cache (its disk writes done) and start another on the same disk directory.
    async fn restart(&mut self, disk_dir: &std::path::Path) {
        self.cache.inner.disk.as_ref().unwrap().flush().await;
        // The old tier lets go of the directory when its cache is dropped.
        let memory_only = rig(Duration::ZERO);
        let old = std::mem::replace(&mut self.cache, memory_only.cache);
        assert!(
            Arc::into_inner(old).is_some(),
            "nothing else holds the old cache"
        );
        let (cache, metrics) = disk_rig(disk_dir);
        self.cache = cache;
        self.metrics = metrics;
    }
}

#[tokio::test]
async fn cache_restart_revalidates_persisted_metadata_and_serves_chunks_from_disk() {
    let disk_dir = tempfile::tempdir().unwrap();
    let mut rig = rig(Duration::from_secs(60));
    (rig.cache, rig.metrics) = disk_rig(disk_dir.path());
    let small = object(3000, 4);
    let big = object(2 * CHUNK as usize + 10, 5);
    rig.write("small", &small);
    rig.write("big", &big);
    assert!(rig.get("small", None).await.unwrap().0 == small);
    assert!(rig.get("big", None).await.unwrap().0 == big);
    rig.cache.inner.disk.as_ref().unwrap().flush().await;
    let stats = rig.cache.stats();
    assert_eq!((stats.disk_entries, stats.disk_metadata_entries), (4, 2));

    rig.restart(disk_dir.path()).await;
    for (key, data) in [("small", &small), ("big", &big)] {
        let (bytes, meta_outcome, outcome) = rig.get(key, None).await.unwrap();
        assert!(&bytes == data, "{key}");
        assert_eq!(
            meta_outcome,
            Outcome::Miss,
            "{key}: revalidated with the origin"
        );
        assert_eq!(outcome, Outcome::HitDisk, "{key}: every chunk from disk");
    }
    let (bytes, _, outcome) = rig.get("big", r(CHUNK, CHUNK + 9)).await.unwrap();
    assert!(bytes[..] == big[CHUNK as usize..][..10]);
    assert_eq!(outcome, Outcome::HitMemory);
    assert_eq!(rig.fills(), 0, "no chunk fetched from the origin");
    assert_eq!(rig.metrics.cache_origin_bytes.get(), 0);

    // A purge takes the metadata with the chunks: the next start opens the object cold.
    assert_eq!(
        rig.cache.purge(&Purge::Key {
            source: "s".into(),
            key: "small".into(),
        }),
        1 + 1,
        "its chunk in memory and on disk"
    );
    rig.restart(disk_dir.path()).await;
    let stats = rig.cache.stats();
    assert_eq!((stats.disk_entries, stats.disk_metadata_entries), (3, 1));
    let (bytes, _, outcome) = rig.get("small", None).await.unwrap();
    assert!(bytes == small);
    // Its chunk came with the cold open's ranged GET, a fill the read joined.
    assert!(
        matches!(outcome, Outcome::Miss | Outcome::Coalesced),
        "{outcome:?}"
    );
    assert_eq!(rig.fills(), 1);
}

#[tokio::test]
async fn cache_an_object_changed_before_a_restart_gets_its_new_bytes_never_old_disk_chunks() {
    let disk_dir = tempfile::tempdir().unwrap();
    let mut rig = rig(Duration::from_secs(60));
    (rig.cache, rig.metrics) = disk_rig(disk_dir.path());
    let old = object(CHUNK as usize + 500, 6);
    rig.write("x", &old);
    assert!(rig.get("x", None).await.unwrap().0 == old);

    // Same size, other bytes, another modification time (so another version).
    let new = object(old.len(), 7);
    rig.write("x", &new);
    std::fs::File::options()
        .write(true)
        .open(rig.root.join("x"))
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000_000))
        .unwrap();
    rig.restart(disk_dir.path()).await;
    let (bytes, _, outcome) = rig.get("x", None).await.unwrap();
    assert!(bytes == new, "the new version, whole");
    assert_eq!(outcome, Outcome::Miss);
    assert_eq!(rig.fills(), 2, "both chunks fetched again");
    let (bytes, _, outcome) = rig.get("x", r(CHUNK, CHUNK + 99)).await.unwrap();
    assert!(bytes[..] == new[CHUNK as usize..][..100]);
    assert_eq!(outcome, Outcome::HitMemory);

    // The replaced metadata is what the next start revalidates: the new chunks, from disk.
    rig.restart(disk_dir.path()).await;
    let (bytes, _, outcome) = rig.get("x", None).await.unwrap();
    assert!(bytes == new);
    assert_eq!(outcome, Outcome::HitDisk);
    assert_eq!(rig.fills(), 0);
    assert_eq!(rig.cache.stats().disk_metadata_entries, 1);
}

#[tokio::test]
async fn cache_reads_past_the_fill_budget_stream_uncached_and_byte_exact() {
    let rig = rig(Duration::from_secs(60));
    let data = object(5 * CHUNK as usize + 123, 9);
    rig.write("big", &data);
    // Learn the metadata (the cold open fills chunk 0), then spend the whole fill budget as if
    // many slow readers held it.
    let (bytes, ..) = rig.get("big", r(0, 10)).await.unwrap();
    assert_eq!(bytes, data[..=10]);
    let inner = &rig.cache.inner;
    let budget = inner.fill_budget();
    assert!(inner.reserve_fill(budget));
    assert!(!inner.reserve_fill(1), "the budget is spent");
    let fills = rig.fills();
    for part in [
        None,
        r(100, 3 * CHUNK + 7),
        r(2 * CHUNK - 1, 5 * CHUNK + 122),
    ] {
        let (bytes, _, outcome) = rig.get("big", part).await.unwrap();
        let want = part.map_or(&data[..], |p| &data[p.start as usize..=p.end as usize]);
        assert!(bytes == want, "{part:?} byte-exact");
        assert_eq!(outcome, Outcome::Miss, "{part:?}");
    }
    assert_eq!(rig.fills(), fills, "no fill past the budget");
    inner.release_fill(budget);
    let (bytes, ..) = rig.get("big", r(3 * CHUNK, 3 * CHUNK + 9)).await.unwrap();
    assert_eq!(bytes, data[3 * CHUNK as usize..3 * CHUNK as usize + 10]);
    assert_eq!(
        rig.fills(),
        fills + 1,
        "nothing was stored past the budget; with it back, a fill again"
    );
}
