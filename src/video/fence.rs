//! The child processes: ffmpeg and ffprobe run with `-nostdin`, a time limit, `kill_on_drop`,
//! stderr captured (bounded) and logged without being sent to the client, never with a key on
//! the command line as an option or a protocol; at most `jobs` at once and `queue` waiting (503 +
//! Retry-After past it); each job's temp dir removed on every exit path; children counted.
//!
//! Skeleton: the fence helper fills this in.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use super::{Tools, VideoError};

/// Which tool a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Ffmpeg,
    Ffprobe,
}

/// A name looked up in PATH, or a path that must exist and be executable.
pub fn resolve_tool(name: &str) -> Result<PathBuf, String> {
    Err(format!("{name} not found (skeleton)"))
}

/// The children of the process (one per gateway, in `video::Work`).
#[derive(Debug)]
pub struct Fence {
    tools: Tools,
}

impl Fence {
    /// `jobs` children at once, `queue` more waiting.
    pub fn new(tools: Tools, jobs: usize, queue: usize) -> Fence {
        let _ = (jobs, queue);
        Fence { tools }
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// Children running now.
    pub fn running(&self) -> usize {
        0
    }

    /// Run `tool` with `args` (after the fence's own: `-nostdin -hide_banner -loglevel error`
    /// for ffmpeg) within `timeout`, the wait for a slot included; its stdout, bounded by
    /// `max_stdout`. A non-zero exit is [`VideoError::Corrupt`] (stderr logged, not returned).
    pub async fn run(
        &self,
        tool: Tool,
        args: Vec<OsString>,
        timeout: Duration,
        max_stdout: usize,
    ) -> Result<Vec<u8>, VideoError> {
        let _ = (tool, args, timeout, max_stdout);
        Err(VideoError::Unavailable("not implemented yet".into()))
    }

    /// A fresh private directory for one job's outputs, removed when dropped.
    pub fn temp_dir(&self) -> Result<tempfile::TempDir, VideoError> {
        tempfile::Builder::new()
            .prefix("bucketgate-video-")
            .tempdir()
            .map_err(|e| VideoError::Unavailable(format!("cannot make a temp dir: {e}")))
    }
}
