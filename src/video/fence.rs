//! The child processes: ffmpeg and ffprobe run with `-nostdin`, a time limit, `kill_on_drop`,
//! stderr captured (bounded) and logged without being sent to the client, never with a key on
//! the command line as an option or a protocol; at most `jobs` at once and `queue` waiting (503 +
//! Retry-After past it); each job's temp dir removed on every exit path; children counted.
//!
//! What a child gets:
//! - the tool's resolved absolute path (found once at start: [`resolve_tool`]);
//! - an EMPTY environment plus `LC_ALL=C`: nothing of ours is inherited (no `AWS_*`, no tokens),
//!   and none of the variables ffmpeg itself reads (`http_proxy`/`no_proxy`, which would send the
//!   loopback feed's requests elsewhere; `FFREPORT`, which writes a log file; `AV_LOG_FORCE_*`);
//! - stdin `/dev/null` and `-nostdin` (ffmpeg reads keys from a terminal otherwise);
//! - `-hide_banner -loglevel error` so stderr holds errors only, at most [`STDERR_BYTES`] kept
//!   (the rest read and dropped so a chatty child never blocks on a full pipe);
//! - for ffmpeg, `-threads T -filter_threads T` where `T = cores / (children running + 1)` when
//!   it starts (at least 1): a job on an idle gateway decodes on every core (a cold poster is as
//!   fast as the ffmpeg CLI), and jobs that start beside others share the cores instead of
//!   oversubscribing them. `-threads` placed first applies to the first input's decoder; a job
//!   that encodes adds `-threads` [`Fence::threads`] to its output itself.
//!
//! The time limit covers the whole job, the wait for a slot included: past it the child is
//! killed (SIGKILL) and reaped before [`Fence::run`] returns [`VideoError::TimedOut`]. A job
//! whose future is dropped (the client went away) kills its child too and a task reaps it; the
//! child's slot and its place in [`Fence::running`] are released only once it is reaped, so the
//! count of live children never exceeds `jobs`.

use std::ffi::{OsStr, OsString};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::{Child, Command};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{Tools, VideoError};

/// Stderr kept per child for the log (the rest is read and dropped).
pub const STDERR_BYTES: usize = 64 << 10;
/// How long a killed child may take to be reaped before we leave it to tokio's orphan reaper.
const REAP_WAIT: Duration = Duration::from_secs(5);
/// The prefix of every job's temp dir (tests look for leftovers by it).
pub const TEMP_PREFIX: &str = "bucketgate-video-";

/// Which tool a job runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tool {
    Ffmpeg,
    Ffprobe,
}

impl Tool {
    fn name(self) -> &'static str {
        match self {
            Tool::Ffmpeg => "ffmpeg",
            Tool::Ffprobe => "ffprobe",
        }
    }
}

/// A name looked up in PATH, or a path that must exist and be executable. The reason, when it
/// cannot be used, names the tool and what to do.
pub fn resolve_tool(name: &str) -> Result<PathBuf, String> {
    if name.is_empty() {
        return Err("video tool path is empty".into());
    }
    if !name.contains('/') {
        let path = std::env::var_os("PATH").unwrap_or_default();
        return std::env::split_paths(&path)
            .filter(|dir| dir.is_absolute())
            .map(|dir| dir.join(name))
            .find(|candidate| is_executable(candidate))
            .ok_or_else(|| format!("{name} not found in PATH (install ffmpeg, or set [video] {name} to its absolute path)"));
    }
    let path = Path::new(name);
    if !path.is_absolute() {
        return Err(format!(
            "{name}: a video tool is a bare name (looked up in PATH) or an absolute path"
        ));
    }
    if is_executable(path) {
        Ok(path.to_path_buf())
    } else {
        Err(format!("{name} is not an executable file"))
    }
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path).is_ok_and(|md| md.is_file() && md.permissions().mode() & 0o111 != 0)
}

/// The children of the process (one per gateway, in `video::Work`).
#[derive(Debug)]
pub struct Fence {
    tools: Tools,
    /// One permit per child that may run; held until the child is reaped.
    slots: Arc<Semaphore>,
    /// Jobs inside [`Fence::run`] (waiting or running); past `jobs + queue` a job is refused.
    admitted: Arc<AtomicUsize>,
    limit: usize,
    /// Children spawned and not yet reaped.
    running: Arc<AtomicUsize>,
    cores: usize,
    temp_root: Option<PathBuf>,
}

impl Fence {
    /// `jobs` children at once (0: one per core), `queue` more waiting.
    pub fn new(tools: Tools, jobs: usize, queue: usize) -> Fence {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let jobs = if jobs == 0 { cores } else { jobs };
        Fence {
            tools,
            slots: Arc::new(Semaphore::new(jobs)),
            admitted: Arc::new(AtomicUsize::new(0)),
            limit: jobs.saturating_add(queue),
            running: Arc::new(AtomicUsize::new(0)),
            cores,
            temp_root: None,
        }
    }

    /// Make job temp dirs below `dir` instead of the system temp dir.
    pub fn with_temp_root(mut self, dir: PathBuf) -> Fence {
        self.temp_root = Some(dir);
        self
    }

    pub fn tools(&self) -> &Tools {
        &self.tools
    }

    /// Children running now (spawned and not yet reaped).
    pub fn running(&self) -> usize {
        self.running.load(Ordering::SeqCst)
    }

    /// Threads a job starting now may use: the cores shared among the children running and
    /// this one (at least 1).
    pub fn threads(&self) -> usize {
        (self.cores / (self.running() + 1)).max(1)
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
        self.run_inner(tool, args, timeout, Some(max_stdout)).await
    }

    /// Run `tool` writing its outputs to files (paths the caller made inside a
    /// [`Fence::temp_dir`]); stdout is discarded. Otherwise as [`Fence::run`].
    pub async fn run_to_files(
        &self,
        tool: Tool,
        args: Vec<OsString>,
        timeout: Duration,
    ) -> Result<(), VideoError> {
        self.run_inner(tool, args, timeout, None).await.map(drop)
    }

    async fn run_inner(
        &self,
        tool: Tool,
        args: Vec<OsString>,
        timeout: Duration,
        max_stdout: Option<usize>,
    ) -> Result<Vec<u8>, VideoError> {
        let deadline = Instant::now() + timeout;
        let program = match tool {
            Tool::Ffmpeg => &self.tools.ffmpeg,
            Tool::Ffprobe => &self.tools.ffprobe,
        };
        let program = program.clone().map_err(VideoError::Unavailable)?;
        let _admitted = Admitted::enter(&self.admitted, self.limit)?;
        let permit = tokio::time::timeout_at(deadline, Arc::clone(&self.slots).acquire_owned())
            .await
            .map_err(|_| VideoError::TimedOut)?
            .map_err(|_| VideoError::Unavailable("video workers are shut down".into()))?;

        let mut command = Command::new(&program);
        command
            .args(self.prefix(tool))
            .args(&args)
            .env_clear()
            .env("LC_ALL", "C")
            .stdin(Stdio::null())
            .stdout(if max_stdout.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let child = command.spawn().map_err(|e| {
            tracing::warn!(tool = tool.name(), program = %program.display(), error = %e, "cannot start video tool");
            VideoError::Unavailable(format!("{} cannot be started", tool.name()))
        })?;
        let mut child = Live::new(child, permit, &self.running);

        let Some(inner) = child.child.as_mut() else {
            return Err(VideoError::Unavailable("lost the child".into()));
        };
        let outcome = tokio::time::timeout_at(deadline, drive(inner, max_stdout)).await;
        match outcome {
            Err(_) => {
                child.kill_and_reap().await;
                tracing::warn!(
                    tool = tool.name(),
                    timeout_ms = timeout.as_millis() as u64,
                    "video job timed out; child killed"
                );
                Err(VideoError::TimedOut)
            }
            Ok(Err(Overflow)) => {
                child.kill_and_reap().await;
                tracing::warn!(
                    tool = tool.name(),
                    max_stdout,
                    "video tool wrote more than allowed; child killed"
                );
                Err(VideoError::Corrupt("output too large".into()))
            }
            Ok(Ok(done)) => {
                child.reaped();
                let stderr = String::from_utf8_lossy(&done.stderr);
                let stderr = stderr.trim_end();
                if done.status.success() {
                    if !stderr.is_empty() {
                        tracing::debug!(tool = tool.name(), %stderr, "video tool stderr");
                    }
                    Ok(done.stdout)
                } else {
                    tracing::warn!(tool = tool.name(), status = %done.status, %stderr, "video tool failed");
                    Err(VideoError::Corrupt(format!("{} failed", tool.name())))
                }
            }
        }
    }

    /// The fence's own arguments, before the caller's.
    fn prefix(&self, tool: Tool) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::with_capacity(9);
        if tool == Tool::Ffmpeg {
            args.push("-nostdin".into());
        }
        args.extend(["-hide_banner", "-loglevel", "error"].map(OsString::from));
        if tool == Tool::Ffmpeg {
            let threads = OsString::from(self.threads().to_string());
            args.extend([
                "-threads".into(),
                threads.clone(),
                "-filter_threads".into(),
                threads,
            ]);
        }
        args
    }

    /// A fresh private directory for one job's outputs, removed when dropped.
    pub fn temp_dir(&self) -> Result<tempfile::TempDir, VideoError> {
        let mut builder = tempfile::Builder::new();
        builder.prefix(TEMP_PREFIX);
        match &self.temp_root {
            Some(root) => builder.tempdir_in(root),
            None => builder.tempdir(),
        }
        .map_err(|e| VideoError::Unavailable(format!("cannot make a temp dir: {e}")))
    }
}

/// A job's place in the fence (waiting or running), given back on drop.
struct Admitted(Arc<AtomicUsize>);

impl Admitted {
    fn enter(counter: &Arc<AtomicUsize>, limit: usize) -> Result<Admitted, VideoError> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < limit).then_some(n + 1)
            })
            .map_err(|_| VideoError::Busy)?;
        Ok(Admitted(Arc::clone(counter)))
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A spawned child with its slot and its place in the running count: both given back once the
/// child is reaped, on every path (a dropped job's child is killed and reaped by a task).
struct Live {
    child: Option<Child>,
    permit: Option<OwnedSemaphorePermit>,
    running: Arc<AtomicUsize>,
}

impl Live {
    fn new(child: Child, permit: OwnedSemaphorePermit, running: &Arc<AtomicUsize>) -> Live {
        running.fetch_add(1, Ordering::SeqCst);
        Live {
            child: Some(child),
            permit: Some(permit),
            running: Arc::clone(running),
        }
    }

    /// The child exited and was waited for.
    fn reaped(&mut self) {
        if self.child.take().is_some() {
            self.running.fetch_sub(1, Ordering::SeqCst);
        }
        self.permit.take();
    }

    /// SIGKILL, then wait for the exit (bounded: a child stuck in the kernel is left to tokio's
    /// orphan reaper, and is no longer counted).
    async fn kill_and_reap(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(REAP_WAIT, child.wait()).await;
        }
        self.reaped();
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = child.start_kill();
        let running = Arc::clone(&self.running);
        let permit = self.permit.take();
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let _ = tokio::time::timeout(REAP_WAIT, child.wait()).await;
                    running.fetch_sub(1, Ordering::SeqCst);
                    drop(permit);
                });
            }
            Err(_) => {
                running.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// Stdout went past its bound.
struct Overflow;

struct Done {
    status: ExitStatus,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

/// Read stdout (bounded) and stderr (capped) to their ends, then wait for the exit.
async fn drive(child: &mut Child, max_stdout: Option<usize>) -> Result<Done, Overflow> {
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out = async {
        match (stdout, max_stdout) {
            (Some(pipe), Some(max)) => read_bounded(pipe, max).await,
            _ => Ok(Vec::new()),
        }
    };
    let err = async {
        match stderr {
            Some(pipe) => read_capped(pipe, STDERR_BYTES).await,
            None => Vec::new(),
        }
    };
    // Both pipes at once: a child blocked writing one while we wait on the other would hang.
    let (stdout, stderr) = tokio::join!(out, err);
    let stdout = stdout?;
    let status = child.wait().await.map_err(|_| Overflow)?;
    Ok(Done {
        status,
        stdout,
        stderr,
    })
}

/// All of `pipe`, or [`Overflow`] as soon as it holds more than `max` bytes.
async fn read_bounded(pipe: impl AsyncRead + Unpin, max: usize) -> Result<Vec<u8>, Overflow> {
    let mut buf = Vec::new();
    let limit = u64::try_from(max).unwrap_or(u64::MAX).saturating_add(1);
    pipe.take(limit)
        .read_to_end(&mut buf)
        .await
        .map_err(|_| Overflow)?;
    if buf.len() > max {
        return Err(Overflow);
    }
    Ok(buf)
}

/// The first `max` bytes of `pipe`; the rest read and dropped until it closes.
async fn read_capped(mut pipe: impl AsyncRead + Unpin, max: usize) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        match pipe.read(&mut chunk).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                kept.extend_from_slice(&chunk[..n.min(room)]);
            }
        }
    }
}

/// `path` as one argument, for the outputs a caller names inside its temp dir.
pub fn path_arg(path: &Path) -> OsString {
    let mut arg = OsString::from("file:");
    arg.push(OsStr::new(path));
    arg
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may; src/ may not
mod tests {
    use super::*;

    fn fence(jobs: usize, queue: usize) -> Fence {
        Fence::new(Tools::find("ffmpeg", "ffprobe"), jobs, queue)
    }

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    /// A 100 s lavfi source played in real time (`-re`) to the null muxer: runs until killed.
    /// `marker` (in its metadata) tells this test's children from other tests' in the process.
    fn endless(marker: &str) -> Vec<OsString> {
        args(&[
            "-re",
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=100:size=64x64:rate=5",
            "-metadata",
            &format!("title={marker}"),
            "-f",
            "null",
            "-",
        ])
    }

    /// The pids of live ffmpeg/ffprobe processes whose parent is this process and whose command
    /// line holds `marker`.
    fn children_marked(marker: &str) -> Vec<u32> {
        let me = std::process::id().to_string();
        let mut pids = Vec::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // pid (comm) state ppid ...
            let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else {
                continue;
            };
            let comm = &stat[open + 1..close];
            let ppid = stat[close + 1..].split_whitespace().nth(1);
            let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
            let marked = String::from_utf8_lossy(&cmdline).contains(marker);
            if (comm == "ffmpeg" || comm == "ffprobe") && ppid == Some(me.as_str()) && marked {
                pids.extend(
                    entry
                        .file_name()
                        .to_str()
                        .and_then(|s| s.parse::<u32>().ok()),
                );
            }
        }
        pids
    }

    /// Wait (polling /proc) until a child marked `marker` runs; its pid.
    async fn pid_of(marker: &str) -> u32 {
        loop {
            if let Some(pid) = children_marked(marker).first() {
                return *pid;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Gone from /proc: exited AND reaped (a zombie still has its entry).
    fn reaped(pid: u32) -> bool {
        !Path::new(&format!("/proc/{pid}")).exists()
    }

    #[test]
    fn resolve_tool_finds_a_name_in_path_and_refuses_others() {
        let found = resolve_tool("ffmpeg").unwrap();
        assert!(found.is_absolute() && found.ends_with("ffmpeg"));
        assert_eq!(resolve_tool(found.to_str().unwrap()).unwrap(), found);
        assert!(
            resolve_tool("no-such-tool-here")
                .unwrap_err()
                .contains("not found")
        );
        assert!(resolve_tool("bin/ffmpeg").unwrap_err().contains("absolute"));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("ffmpeg");
        std::fs::write(&plain, "not a program").unwrap();
        std::fs::set_permissions(&plain, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(
            resolve_tool(plain.to_str().unwrap())
                .unwrap_err()
                .contains("executable")
        );
        assert!(resolve_tool("/tmp").unwrap_err().contains("executable"));
        assert!(resolve_tool("/nonexistent/ffmpeg").is_err());
        assert!(resolve_tool("").is_err());
    }

    #[tokio::test]
    async fn run_returns_stdout_of_a_successful_child() {
        let fence = fence(1, 0);
        let out = fence
            .run(
                Tool::Ffprobe,
                args(&[
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc=duration=1:size=32x32",
                    "-of",
                    "json",
                    "-show_streams",
                ]),
                Duration::from_secs(20),
                1 << 20,
            )
            .await
            .unwrap();
        let text = String::from_utf8(out).unwrap();
        assert!(text.contains("\"width\": 32"), "{text}");
        assert_eq!(fence.running(), 0);
    }

    #[tokio::test]
    async fn timeout_kills_and_reaps_the_child() {
        let marker = "timeout_kills_and_reaps_the_child";
        let fence = Arc::new(fence(1, 0));
        let f = Arc::clone(&fence);
        let started = std::time::Instant::now();
        let job = tokio::spawn(async move {
            f.run(Tool::Ffmpeg, endless(marker), Duration::from_secs(1), 1024)
                .await
        });
        let pid = pid_of(marker).await;
        let err = job.await.unwrap().unwrap_err();
        assert!(matches!(err, VideoError::TimedOut), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(reaped(pid), "child {pid} left running or unreaped");
        assert_eq!(fence.running(), 0);
        assert_eq!(fence.slots.available_permits(), 1);
    }

    #[tokio::test]
    async fn a_dropped_job_kills_its_child_and_frees_the_slot() {
        let marker = "a_dropped_job_kills_its_child_and_frees_the_slot";
        let fence = Arc::new(fence(1, 0));
        let f = Arc::clone(&fence);
        let job = tokio::spawn(async move {
            f.run(Tool::Ffmpeg, endless(marker), Duration::from_secs(60), 1024)
                .await
        });
        let pid = pid_of(marker).await;
        job.abort();
        let _ = job.await;
        // The reaper task gives the slot back once the child is gone.
        let permit = tokio::time::timeout(Duration::from_secs(10), fence.slots.acquire())
            .await
            .unwrap()
            .unwrap();
        drop(permit);
        assert_eq!(fence.running(), 0);
        assert!(reaped(pid), "child {pid} left running or unreaped");
    }

    #[tokio::test]
    async fn past_the_queue_bound_a_job_is_busy_at_once() {
        let marker = "past_the_queue_bound_a_job_is_busy_at_once";
        let fence = Arc::new(fence(1, 1));
        let mut jobs = Vec::new();
        for _ in 0..2 {
            let f = Arc::clone(&fence);
            jobs.push(tokio::spawn(async move {
                f.run(Tool::Ffmpeg, endless(marker), Duration::from_secs(60), 1024)
                    .await
            }));
        }
        pid_of(marker).await;
        while fence.admitted.load(Ordering::SeqCst) < 2 {
            tokio::task::yield_now().await;
        }
        let started = std::time::Instant::now();
        let err = fence
            .run(Tool::Ffmpeg, endless(marker), Duration::from_secs(60), 1024)
            .await
            .unwrap_err();
        assert!(matches!(err, VideoError::Busy), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1));
        assert_eq!(fence.running(), 1);
        assert_eq!(children_marked(marker).len(), 1);
        for job in jobs {
            job.abort();
            let _ = job.await;
        }
    }

    #[tokio::test]
    async fn the_wait_for_a_slot_counts_against_the_time_limit() {
        let marker = "the_wait_for_a_slot_counts_against_the_time_limit";
        let fence = Arc::new(fence(1, 4));
        let f = Arc::clone(&fence);
        let holder = tokio::spawn(async move {
            f.run(Tool::Ffmpeg, endless(marker), Duration::from_secs(60), 1024)
                .await
        });
        pid_of(marker).await;
        let err = fence
            .run(
                Tool::Ffprobe,
                args(&["-version"]),
                Duration::from_millis(300),
                1 << 20,
            )
            .await
            .unwrap_err();
        assert!(matches!(err, VideoError::TimedOut), "{err:?}");
        holder.abort();
        let _ = holder.await;
    }

    #[tokio::test]
    async fn stdout_past_its_bound_kills_the_child() {
        let marker = "stdout_past_its_bound_kills_the_child";
        let fence = Arc::new(fence(1, 0));
        let f = Arc::clone(&fence);
        // Real time, so the child is still running when we look for it.
        let job = tokio::spawn(async move {
            f.run(
                Tool::Ffmpeg,
                args(&[
                    "-re",
                    "-f",
                    "lavfi",
                    "-i",
                    "testsrc=duration=100:size=320x240:rate=5",
                    "-metadata",
                    &format!("title={marker}"),
                    "-f",
                    "rawvideo",
                    "pipe:1",
                ]),
                Duration::from_secs(30),
                1_000_000,
            )
            .await
        });
        let pid = pid_of(marker).await;
        let err = job.await.unwrap().unwrap_err();
        assert!(
            matches!(&err, VideoError::Corrupt(m) if m == "output too large"),
            "{err:?}"
        );
        assert_eq!(fence.running(), 0);
        assert!(reaped(pid));
    }

    #[tokio::test]
    async fn a_failure_never_returns_stderr() {
        let fence = fence(1, 0);
        let err = fence
            .run(
                Tool::Ffmpeg,
                args(&["-i", "/nonexistent/secret-key-name.mp4", "-f", "null", "-"]),
                Duration::from_secs(20),
                1024,
            )
            .await
            .unwrap_err();
        let text = err.to_string();
        assert!(
            matches!(&err, VideoError::Corrupt(m) if m == "ffmpeg failed"),
            "{err:?}"
        );
        assert!(!text.contains("secret"), "{text}");
        assert!(!text.contains("No such file"), "{text}");
    }

    #[tokio::test]
    async fn the_child_inherits_no_environment_and_gets_the_fence_arguments() {
        let marker = "the_child_inherits_no_environment";
        let fence = Arc::new(fence(1, 0));
        let f = Arc::clone(&fence);
        let job = tokio::spawn(async move {
            f.run(Tool::Ffmpeg, endless(marker), Duration::from_secs(60), 1024)
                .await
        });
        let pid = pid_of(marker).await;
        let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap();
        job.abort();
        let _ = job.await;
        assert_eq!(String::from_utf8_lossy(&environ), "LC_ALL=C\0");
        let cmdline: Vec<String> = cmdline
            .split(|b| *b == 0)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect();
        assert_eq!(
            cmdline[1..5],
            ["-nostdin", "-hide_banner", "-loglevel", "error"]
        );
        assert_eq!(cmdline[5], "-threads");
        assert_eq!(cmdline[7], "-filter_threads");
    }

    #[tokio::test]
    async fn files_variant_writes_into_the_job_temp_dir_which_is_removed() {
        let root = tempfile::tempdir().unwrap();
        let fence = fence(1, 0).with_temp_root(root.path().to_path_buf());
        let dir = fence.temp_dir().unwrap();
        let out = dir.path().join("out.png");
        let mut a = args(&["-f", "lavfi", "-i", "testsrc=size=32x32", "-frames:v", "1"]);
        a.push(path_arg(&out));
        fence
            .run_to_files(Tool::Ffmpeg, a, Duration::from_secs(20))
            .await
            .unwrap();
        assert!(std::fs::metadata(&out).unwrap().len() > 0);
        drop(dir);
        assert_eq!(std::fs::read_dir(root.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn a_missing_tool_is_unavailable_not_a_panic() {
        let tools = Tools {
            ffmpeg: Err("ffmpeg not found in PATH".into()),
            ffprobe: Err("ffprobe not found in PATH".into()),
        };
        let fence = Fence::new(tools, 1, 0);
        let err = fence
            .run(Tool::Ffmpeg, Vec::new(), Duration::from_secs(1), 1)
            .await
            .unwrap_err();
        assert!(matches!(&err, VideoError::Unavailable(m) if m.contains("not found")));
    }
}
