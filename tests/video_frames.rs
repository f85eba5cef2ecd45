//! Video frame index and exact frames (issue 14): the MP4 index read from the boxes agrees with
//! ffprobe's frame times on every sample; frames and posters equal ffmpeg's `select=eq(n,N)`
//! reference.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use bucketgate::video::VideoError;
use bucketgate::video::mp4::{self, ReadAt};
use bucketgate::video::probe::FrameIndex;

use crate::support::video::{self, Sample};

/// A local file read by ranges, counting the bytes read.
struct CountingFile {
    bytes: Vec<u8>,
    read: AtomicU64,
}

impl CountingFile {
    fn open(path: &Path) -> CountingFile {
        CountingFile {
            bytes: std::fs::read(path).unwrap(),
            read: AtomicU64::new(0),
        }
    }
}

impl ReadAt for CountingFile {
    async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, VideoError> {
        let s = (offset as usize).min(self.bytes.len());
        let e = (offset.saturating_add(len) as usize).min(self.bytes.len());
        self.read.fetch_add((e - s) as u64, Ordering::Relaxed);
        Ok(Bytes::copy_from_slice(&self.bytes[s..e]))
    }

    fn size(&self) -> u64 {
        self.bytes.len() as u64
    }
}

fn index_of(file: &CountingFile) -> FrameIndex {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap()
        .block_on(mp4::read_index(file))
        .unwrap()
        .expect("not fragmented")
}

/// ffprobe's keyframe packets, as frame numbers in presentation order.
fn ffprobe_keyframes(path: &Path) -> Vec<usize> {
    let out = std::process::Command::new("ffprobe")
        .args([
            "-v",
            "error",
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,flags",
            "-of",
            "csv=p=0:nk=0",
        ])
        .arg(path)
        .output()
        .unwrap();
    assert!(out.status.success());
    let idx = mp4::parse_packet_list(&out.stdout).unwrap();
    idx.keyframes
}

#[test]
fn mp4_index_matches_ffprobe_on_every_mp4_sample() {
    for s in [
        Sample::H264Faststart,
        Sample::MoovAtEnd,
        Sample::Vfr,
        Sample::Rotated,
        Sample::Hevc,
    ] {
        let path = video::sample(s);
        let file = CountingFile::open(&path);
        let idx = index_of(&file);
        let expected = video::frame_times(&path);
        assert_eq!(idx.pts.len(), expected.len(), "{s:?}: frame count");
        for (n, (a, b)) in idx.pts.iter().zip(&expected).enumerate() {
            assert!(
                (a - b).abs() < 0.001,
                "{s:?}: frame {n}: {a} vs ffprobe {b}"
            );
        }
        assert_eq!(idx.keyframes, ffprobe_keyframes(&path), "{s:?}: keyframes");
        if s != Sample::Vfr {
            // GOP 2 s at 25 fps.
            let every_50: Vec<usize> = (0..idx.pts.len()).step_by(50).collect();
            assert_eq!(idx.keyframes, every_50, "{s:?}");
        }
        // Only headers and the index were read, never the media data.
        let read = file.read.load(Ordering::Relaxed);
        assert!(
            read * 10 < file.size(),
            "{s:?}: read {read} of {} bytes",
            file.size()
        );
    }
}
