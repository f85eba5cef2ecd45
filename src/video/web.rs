//! `web.mp4`: a progressive MP4 browsers play and seek: an H.264/AAC source is remuxed with its
//! index in front (`-c copy -movflags +faststart`, no re-encode); anything else is transcoded to
//! H.264 (yuv420p) and AAC. The output is written whole into the rendition store (a directory
//! with a byte budget, least recently used removed first, files renamed into place only when
//! complete), and served from there with Range; a request during the job waits for it.
//!
//! The store owns one directory (made 0700). Its index lives in memory only, so a start removes
//! what a previous run left there (its `tmp-*` files and its entries, never other files). An
//! entry's file is named by a hash of its [`CacheKey`] (no key text reaches a path). A job writes
//! into `tmp-<random>.mp4` in the same directory and the file is renamed to the entry's name only
//! after ffmpeg exited 0 and the output's top-level boxes check out (`ftyp` first, `moov` before
//! `mdat`, sizes covering the file exactly); a failed or cancelled job's temp file is removed when
//! its handle drops. Readers get an open handle ([`Rendition`]), so evicting an entry being served
//! only unlinks its name. Identical concurrent requests share one job (the store's own flights,
//! keyed by the entry), and a request arriving after the job sees the stored entry.
//!
//! Not here: Range and conditional requests (the pipeline serves a [`Rendition`]), the route.

use std::fs::File;
use std::os::unix::fs::{DirBuilderExt, FileExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use sha2::{Digest, Sha256};

use super::fence::Tool;
use super::probe::{StreamKind, VideoProbe};
use super::{Container, Job, VideoError};
use crate::cache::key::CacheKey;

/// The content type of `web.mp4`.
pub const CONTENT_TYPE: &str = "video/mp4";

/// A finished rendition in the store, open (so eviction while it is served is harmless).
/// The handle is shared by every response serving it: read with [`Rendition::read_at`]
/// (positional), or seek a [`Rendition::reopen`]ed handle; never seek `file` or a `try_clone`
/// of it (a clone shares the offset, so concurrent responses would read each other's bytes).
#[derive(Debug)]
pub struct Rendition {
    pub file: std::fs::File,
    pub len: u64,
    pub content_type: &'static str,
}

impl Rendition {
    /// Bytes at `offset` into `buf` (positional: concurrent readers do not disturb each other).
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        self.file.read_at(buf, offset)
    }

    /// A new read-only handle on the same file with its own offset (through `/proc/self/fd`,
    /// so it works after eviction unlinked the name).
    pub fn reopen(&self) -> std::io::Result<File> {
        use std::os::fd::AsRawFd;
        File::open(format!("/proc/self/fd/{}", self.file.as_raw_fd()))
    }
}

/// One stored entry: its file name in the store's directory and its size.
#[derive(Debug)]
struct Stored {
    name: String,
    len: u64,
    content_type: &'static str,
}

#[derive(Debug)]
struct Index {
    entries: lru::LruCache<CacheKey, Stored>,
    total: u64,
}

/// The rendition store (one per process, in `video::Work`).
pub struct Store {
    dir: PathBuf,
    budget: u64,
    index: Mutex<Index>,
    making: crate::image::Flights<CacheKey, Arc<Rendition>, VideoError>,
    made: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("dir", &self.dir)
            .field("budget", &self.budget)
            .field("bytes", &self.bytes())
            .finish_non_exhaustive()
    }
}

/// A rendition being written: `tmp-<random>.mp4` in the store's directory, removed when dropped
/// unless [`Store::put`] renamed it into place.
#[derive(Debug)]
pub struct Pending {
    tmp: tempfile::NamedTempFile,
}

impl Pending {
    pub fn path(&self) -> &Path {
        self.tmp.path()
    }
}

/// Whether `name` is a file this store makes: a temp file or an entry (64 hex digits + `.mp4`).
fn is_ours(name: &str) -> bool {
    if name.starts_with("tmp-") {
        return true;
    }
    name.strip_suffix(".mp4").is_some_and(|stem| {
        stem.len() == 64 && stem.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// The file name of `entry`: the SHA-256 of its unambiguous encoding (every field
/// length-prefixed, as the cache's chunk ids), so no key text reaches a path.
fn file_name(entry: &CacheKey) -> String {
    let digest = Sha256::digest(entry.chunk(0).as_bytes());
    format!("{}.mp4", hex::encode(digest))
}

impl Store {
    /// A store in `dir` (made 0700, emptied of a previous run's entries and temp files; other
    /// files are left alone) holding at most `budget` bytes.
    ///
    /// Signature change from the skeleton: it returns the error of making or emptying `dir`
    /// (a start-up failure) instead of failing every later job.
    pub fn new(dir: PathBuf, budget: u64) -> std::io::Result<Store> {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        for item in std::fs::read_dir(&dir)? {
            let item = item?;
            let name = item.file_name();
            if name.to_str().is_some_and(is_ours) && item.file_type()?.is_file() {
                match std::fs::remove_file(item.path()) {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(Store {
            dir,
            budget,
            index: Mutex::new(Index {
                entries: lru::LruCache::unbounded(),
                total: 0,
            }),
            making: crate::image::Flights::default(),
            made: AtomicU64::new(0),
        })
    }

    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Bytes of the entries stored now.
    pub fn bytes(&self) -> u64 {
        self.lock().total
    }

    /// Entries stored now.
    pub fn len(&self) -> usize {
        self.lock().entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Renditions this store's jobs have made since start (a shared job counts once).
    pub fn made(&self) -> u64 {
        self.made.load(Ordering::Relaxed)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The stored rendition of `entry`, opened, and marked most recently used.
    pub fn get(&self, entry: &CacheKey) -> Option<Arc<Rendition>> {
        let mut index = self.lock();
        let stored = index.entries.get(entry)?;
        // Opened under the lock: eviction (also under it) cannot unlink the name in between.
        match File::open(self.dir.join(&stored.name)) {
            Ok(file) => Some(Arc::new(Rendition {
                file,
                len: stored.len,
                content_type: stored.content_type,
            })),
            Err(e) => {
                tracing::warn!(error = %e, "video store entry vanished; forgetting it");
                if let Some(gone) = index.entries.pop(entry) {
                    index.total = index.total.saturating_sub(gone.len);
                }
                None
            }
        }
    }

    /// A new temp file for a job's output.
    pub fn pending(&self) -> Result<Pending, VideoError> {
        tempfile::Builder::new()
            .prefix("tmp-")
            .suffix(".mp4")
            .tempfile_in(&self.dir)
            .map(|tmp| Pending { tmp })
            .map_err(|e| VideoError::Unavailable(format!("cannot write the video store: {e}")))
    }

    /// Store `pending` (complete: the job succeeded and its output was checked) as `entry`,
    /// then evict least recently used entries until the store fits its budget. A rendition
    /// larger than the whole budget is returned (open) but not kept.
    pub fn put(
        &self,
        entry: &CacheKey,
        pending: Pending,
        content_type: &'static str,
    ) -> Result<Arc<Rendition>, VideoError> {
        let unavailable = |e: std::io::Error| {
            VideoError::Unavailable(format!("cannot write the video store: {e}"))
        };
        let len = pending.tmp.as_file().metadata().map_err(unavailable)?.len();
        if len == 0 {
            return Err(VideoError::Corrupt("ffmpeg wrote nothing".into()));
        }
        let name = file_name(entry);
        let mut index = self.lock();
        let file = pending
            .tmp
            .persist(self.dir.join(&name))
            .map_err(|e| unavailable(e.error))?;
        if let Some(old) = index.entries.put(
            entry.clone(),
            Stored {
                name,
                len,
                content_type,
            },
        ) {
            index.total = index.total.saturating_sub(old.len);
        }
        index.total += len;
        while index.total > self.budget {
            let Some((_, gone)) = index.entries.pop_lru() else {
                break;
            };
            index.total = index.total.saturating_sub(gone.len);
            if let Err(e) = std::fs::remove_file(self.dir.join(&gone.name)) {
                tracing::warn!(error = %e, "cannot remove an evicted video rendition");
            }
        }
        Ok(Arc::new(Rendition {
            file,
            len,
            content_type,
        }))
    }
}

/// How `web.mp4` is made from a source.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// H.264 (yuv420p) with AAC or no audio in MP4/MOV or Matroska: copied, index in front.
    Remux,
    /// Anything else: H.264 yuv420p + AAC.
    Transcode,
}

impl Plan {
    pub fn of(probe: &VideoProbe) -> Plan {
        if probe.browser_ready {
            return Plan::Remux;
        }
        let Some(video) = probe.video.and_then(|i| probe.streams.get(i)) else {
            return Plan::Transcode;
        };
        let container = matches!(probe.container, Container::Mov | Container::Matroska);
        let picture = video.codec == "h264" && video.pix_fmt.as_deref() == Some("yuv420p");
        // `-map 0:a:0?` takes the first audio stream, so only that one matters.
        let sound = probe
            .streams
            .iter()
            .find(|s| s.kind == StreamKind::Audio)
            .is_none_or(|a| a.codec == "aac");
        if container && picture && sound {
            Plan::Remux
        } else {
            Plan::Transcode
        }
    }
}

/// ffmpeg's arguments after the input's: the first video and audio stream, copied or
/// transcoded, index in front, written to `out`.
fn output_args(plan: Plan, limits: &super::VideoLimits, out: &Path) -> Vec<std::ffi::OsString> {
    let mut args: Vec<String> = ["-map", "0:v:0", "-map", "0:a:0?", "-map_chapters", "-1"]
        .map(String::from)
        .to_vec();
    match plan {
        // Copying keeps the display matrix (a rotated phone video stays rotated).
        Plan::Remux => args.extend(["-c", "copy"].map(String::from)),
        Plan::Transcode => {
            // ffmpeg autorotates before this filter, so iw/ih are the displayed sides: fit the
            // longer in max_output_side, never upscale, both sides even (yuv420p needs it).
            let side = limits.max_output_side.max(2);
            let fit = format!("min(1\\,{side}/max(iw\\,ih))");
            let scale =
                format!("scale=w='max(2\\,trunc({fit}*iw/2)*2)':h='max(2\\,trunc({fit}*ih/2)*2)'");
            args.extend(
                [
                    "-c:v",
                    "libx264",
                    "-preset",
                    &limits.preset,
                    "-crf",
                    &limits.crf.to_string(),
                    "-pix_fmt",
                    "yuv420p",
                    "-vf",
                    &scale,
                    // Keep every frame at its source time (a variable-rate source stays
                    // frame-for-frame, so frame n here is frame n there).
                    "-fps_mode",
                    "passthrough",
                    "-c:a",
                    "aac",
                    "-b:a",
                    "128k",
                ]
                .map(String::from),
            );
        }
    }
    args.extend(
        [
            "-movflags",
            "+faststart",
            "-max_muxing_queue_size",
            "4096",
            "-f",
            "mp4",
            "-y",
        ]
        .map(String::from),
    );
    let mut args: Vec<std::ffi::OsString> = args.into_iter().map(Into::into).collect();
    // `file:` so the output is never read as another protocol, whatever the store's path.
    args.push(super::fence::path_arg(out));
    args
}

/// The top-level boxes of an MP4 file of `len` bytes: (type, offset, size). Errors when a box
/// is malformed or runs past the end.
pub fn top_level_boxes(file: &File, len: u64) -> Result<Vec<([u8; 4], u64, u64)>, String> {
    let mut boxes = Vec::new();
    let mut offset = 0u64;
    while offset < len {
        let mut head = [0u8; 16];
        let want = (len - offset).min(16) as usize;
        let head = &mut head[..want];
        file.read_exact_at(head, offset)
            .map_err(|e| format!("cannot read the box at {offset}: {e}"))?;
        if want < 8 {
            return Err(format!("truncated box header at {offset}"));
        }
        let size32 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        let kind = [head[4], head[5], head[6], head[7]];
        let size = match size32 {
            0 => len - offset,
            1 => {
                if want < 16 {
                    return Err(format!("truncated box header at {offset}"));
                }
                let mut large = [0u8; 8];
                large.copy_from_slice(&head[8..16]);
                let size = u64::from_be_bytes(large);
                if size < 16 {
                    return Err(format!("bad box size at {offset}"));
                }
                size
            }
            n if n < 8 => return Err(format!("bad box size at {offset}")),
            n => u64::from(n),
        };
        if size > len - offset {
            return Err(format!("box at {offset} runs past the end"));
        }
        boxes.push((kind, offset, size));
        offset += size;
    }
    Ok(boxes)
}

/// Whether ffmpeg's output is a whole progressive MP4: `ftyp` first, `moov` before any `mdat`,
/// the boxes covering the file exactly.
fn check_progressive(file: &File, len: u64) -> Result<(), String> {
    let boxes = top_level_boxes(file, len)?;
    if boxes.first().map(|b| &b.0) != Some(b"ftyp") {
        return Err("output does not begin with ftyp".into());
    }
    let moov = boxes.iter().position(|b| &b.0 == b"moov");
    let mdat = boxes.iter().position(|b| &b.0 == b"mdat");
    match (moov, mdat) {
        (Some(m), Some(d)) if m < d => Ok(()),
        (Some(_), None) => Ok(()),
        (Some(_), Some(_)) => Err("output has its index after the media".into()),
        (None, _) => Err("output has no index".into()),
    }
}

/// The browser-ready MP4 of `job`'s video, from the store or made now.
/// `entry` names the rendition (object version and `web.mp4`).
pub async fn web_mp4(
    job: &Job<'_>,
    entry: &crate::cache::key::CacheKey,
) -> Result<Arc<Rendition>, VideoError> {
    let store = &job.work.store;
    if let Some(found) = store.get(entry) {
        return Ok(found);
    }
    let (made, _led) = store
        .making
        .run(entry, async {
            // A job that finished between the look-up above and joining the flight.
            if let Some(found) = store.get(entry) {
                return Ok(found);
            }
            make(job, entry).await
        })
        .await;
    made
}

async fn make(job: &Job<'_>, entry: &CacheKey) -> Result<Arc<Rendition>, VideoError> {
    if job.probe.video.is_none() {
        return Err(VideoError::NoSuchPart(
            "the source has no video stream".into(),
        ));
    }
    let store = &job.work.store;
    let plan = Plan::of(job.probe);
    let pending = store.pending()?;
    let mut opened = job.input.open(job.probe.container).await?;
    let mut args = std::mem::take(&mut opened.args);
    args.extend(output_args(plan, job.limits, pending.path()));
    job.work
        .fence
        .run_to_files(Tool::Ffmpeg, args, job.limits.transcode_timeout)
        .await?;
    drop(opened);
    let file = pending.tmp.as_file();
    let len = file
        .metadata()
        .map_err(|e| VideoError::Unavailable(format!("cannot read the video store: {e}")))?
        .len();
    if let Err(why) = check_progressive(file, len) {
        tracing::warn!(%why, ?plan, "ffmpeg exited 0 but its web.mp4 is not whole");
        return Err(VideoError::Corrupt(
            "the browser-ready copy came out broken".into(),
        ));
    }
    store.made.fetch_add(1, Ordering::Relaxed);
    tracing::debug!(?plan, bytes = len, "web.mp4 made");
    store.put(entry, pending, CONTENT_TYPE)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap; src/ may not
mod tests {
    use super::*;
    use crate::cache::key::{ObjectId, Partition};

    fn key(name: &str) -> CacheKey {
        CacheKey::new(
            ObjectId::new("src", name, Partition::Gateway),
            "v1",
            "web.mp4",
        )
    }

    fn write(store: &Store, len: usize) -> Pending {
        let pending = store.pending().expect("pending");
        std::fs::write(pending.path(), vec![7u8; len]).expect("write");
        pending
    }

    fn names(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .expect("read dir")
            .map(|e| e.expect("entry").file_name().into_string().expect("utf-8"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn store_new_makes_a_private_dir_and_removes_leftovers_only() {
        let root = tempfile::tempdir().expect("tmp");
        let dir = root.path().join("renditions");
        std::fs::create_dir(&dir).expect("mkdir");
        let entry = format!("{}.mp4", "ab".repeat(32));
        for name in ["tmp-abc.mp4", &entry, "notes.txt", "short.mp4"] {
            std::fs::write(dir.join(name), b"x").expect("write");
        }
        let store = Store::new(dir.clone(), 1000).expect("store");
        assert_eq!(names(&dir), vec!["notes.txt", "short.mp4"]);
        let mode = std::fs::metadata(&dir).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
        assert!(store.is_empty());
        assert_eq!(store.bytes(), 0);
    }

    #[test]
    fn store_put_then_get_serves_the_same_bytes() {
        let root = tempfile::tempdir().expect("tmp");
        let store = Store::new(root.path().join("s"), 1000).expect("store");
        assert!(store.get(&key("a")).is_none());
        let put = store
            .put(&key("a"), write(&store, 100), CONTENT_TYPE)
            .expect("put");
        assert_eq!(put.len, 100);
        let got = store.get(&key("a")).expect("stored");
        let mut buf = [0u8; 10];
        assert_eq!(got.read_at(&mut buf, 95).expect("read"), 5);
        assert_eq!(&buf[..5], &[7u8; 5]);
        assert_eq!(got.content_type, "video/mp4");
        assert_eq!(store.bytes(), 100);
        // One entry file, named by the hash, no temp file left.
        let names = names(store.dir());
        assert_eq!(names.len(), 1);
        assert!(is_ours(&names[0]) && !names[0].starts_with("tmp-"));
    }

    #[test]
    fn store_evicts_least_recently_used_to_fit_the_budget() {
        let root = tempfile::tempdir().expect("tmp");
        let store = Store::new(root.path().join("s"), 250).expect("store");
        store
            .put(&key("a"), write(&store, 100), CONTENT_TYPE)
            .expect("a");
        store
            .put(&key("b"), write(&store, 100), CONTENT_TYPE)
            .expect("b");
        // Touch a: b is now the least recently used.
        let a = store.get(&key("a")).expect("a stored");
        store
            .put(&key("c"), write(&store, 100), CONTENT_TYPE)
            .expect("c");
        assert!(store.get(&key("b")).is_none(), "b evicted");
        assert!(store.get(&key("a")).is_some());
        assert!(store.get(&key("c")).is_some());
        assert_eq!(store.bytes(), 200);
        assert_eq!(names(store.dir()).len(), 2);
        // Evicting a while it is open leaves the open handle readable.
        store
            .put(&key("d"), write(&store, 100), CONTENT_TYPE)
            .expect("d");
        store
            .put(&key("e"), write(&store, 100), CONTENT_TYPE)
            .expect("e");
        assert!(store.get(&key("a")).is_none(), "a evicted");
        let mut buf = [0u8; 100];
        assert_eq!(a.read_at(&mut buf, 0).expect("read evicted"), 100);
        // Reopened handles of an evicted rendition read it too, each at its own offset.
        use std::io::{Read, Seek};
        let (mut one, mut two) = (a.reopen().expect("reopen"), a.reopen().expect("reopen"));
        one.seek(std::io::SeekFrom::Start(90)).expect("seek");
        assert_eq!(two.read(&mut buf).expect("read"), 100);
        assert_eq!(one.read(&mut buf).expect("read"), 10);
        assert_eq!(store.bytes(), 200);
    }

    #[test]
    fn store_keeps_nothing_larger_than_its_budget_but_returns_it() {
        let root = tempfile::tempdir().expect("tmp");
        let store = Store::new(root.path().join("s"), 50).expect("store");
        let big = store
            .put(&key("a"), write(&store, 100), CONTENT_TYPE)
            .expect("a");
        let mut buf = [0u8; 100];
        assert_eq!(big.read_at(&mut buf, 0).expect("read"), 100);
        assert!(store.get(&key("a")).is_none());
        assert_eq!(store.bytes(), 0);
        assert!(names(store.dir()).is_empty());
    }

    #[test]
    fn store_partial_output_is_never_visible() {
        let root = tempfile::tempdir().expect("tmp");
        let store = Store::new(root.path().join("s"), 1000).expect("store");
        let pending = write(&store, 100);
        // While the job writes, the entry is absent; its temp file is the only file.
        assert!(store.get(&key("a")).is_none());
        assert_eq!(names(store.dir()).len(), 1);
        // A failed job drops its output: nothing stays.
        drop(pending);
        assert!(names(store.dir()).is_empty());
        assert!(store.get(&key("a")).is_none());
        // An empty output is refused and removed.
        let empty = store.pending().expect("pending");
        assert!(matches!(
            store.put(&key("a"), empty, CONTENT_TYPE),
            Err(VideoError::Corrupt(_))
        ));
        assert!(names(store.dir()).is_empty());
        assert!(store.get(&key("a")).is_none());
    }

    #[test]
    fn store_names_entries_apart_by_version_and_partition() {
        let a = key("a");
        let b = CacheKey::new(
            ObjectId::new("src", "a", Partition::Gateway),
            "v2",
            "web.mp4",
        );
        let c = CacheKey::new(
            ObjectId::new("src", "a", Partition::User("arn:x".into())),
            "v1",
            "web.mp4",
        );
        let names = [file_name(&a), file_name(&b), file_name(&c)];
        assert!(names.iter().all(|n| is_ours(n)));
        assert_ne!(names[0], names[1]);
        assert_ne!(names[0], names[2]);
        assert_eq!(file_name(&a), file_name(&key("a")));
    }

    fn mp4_of(boxes: &[(&[u8; 4], usize)]) -> (tempfile::NamedTempFile, u64) {
        let mut bytes = Vec::new();
        for (kind, size) in boxes {
            bytes.extend_from_slice(&(*size as u32).to_be_bytes());
            bytes.extend_from_slice(*kind);
            bytes.extend(std::iter::repeat_n(0u8, size - 8));
        }
        let tmp = tempfile::NamedTempFile::new().expect("tmp");
        std::fs::write(tmp.path(), &bytes).expect("write");
        (tmp, bytes.len() as u64)
    }

    #[test]
    fn web_output_check_wants_ftyp_then_moov_before_mdat() {
        let (ok, len) = mp4_of(&[(b"ftyp", 24), (b"moov", 100), (b"mdat", 50)]);
        assert!(check_progressive(ok.as_file(), len).is_ok());
        let (late, len) = mp4_of(&[(b"ftyp", 24), (b"mdat", 50), (b"moov", 100)]);
        assert!(check_progressive(late.as_file(), len).is_err());
        let (none, len) = mp4_of(&[(b"ftyp", 24), (b"mdat", 50)]);
        assert!(check_progressive(none.as_file(), len).is_err());
        let (truncated, len) = mp4_of(&[(b"ftyp", 24), (b"moov", 100), (b"mdat", 50)]);
        assert!(check_progressive(truncated.as_file(), len - 10).is_err());
        let (nofyp, len) = mp4_of(&[(b"moov", 100), (b"mdat", 50)]);
        assert!(check_progressive(nofyp.as_file(), len).is_err());
    }
}
