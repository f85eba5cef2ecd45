//! The bounded decode pool: image CPU work runs on its own threads, never on the async ones; a
//! queue bound beyond which jobs are refused ([`ImageError::Busy`](super::ImageError::Busy),
//! 503 + Retry-After); a time limit per job; a panic inside a codec is contained to its job
//! ([`ImageError::Corrupt`](super::ImageError::Corrupt), 422) and logged without content.
//!
//! Skeleton: the helper that owns the pool fills this in.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::ImageError;

/// The decode pool (one per process, held in `state::Shared`).
#[derive(Debug)]
pub struct Pool {
    /// One permit per worker thread.
    workers: Arc<Semaphore>,
    /// Jobs admitted (running or waiting for a worker); at most `workers + queue`.
    admitted: AtomicUsize,
    capacity: usize,
}

impl Pool {
    /// `workers` threads at once (0: one per core), `queue` more jobs waiting.
    pub fn new(workers: usize, queue: usize) -> Pool {
        let workers = if workers == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            workers
        };
        Pool {
            workers: Arc::new(Semaphore::new(workers)),
            admitted: AtomicUsize::new(0),
            capacity: workers + queue,
        }
    }

    /// Jobs running or waiting now.
    pub fn in_flight(&self) -> usize {
        self.admitted.load(Ordering::Relaxed)
    }

    /// Run `job` on a worker thread within `timeout` (the wait for a worker included). A full
    /// queue is [`ImageError::Busy`] at once; a panic in `job` is [`ImageError::Corrupt`].
    pub async fn run<T, F>(&self, timeout: Duration, job: F) -> Result<T, ImageError>
    where
        T: Send + 'static,
        F: FnOnce() -> Result<T, ImageError> + Send + 'static,
    {
        let admitted = self.admitted.fetch_add(1, Ordering::AcqRel);
        let _slot = Slot(&self.admitted);
        if admitted >= self.capacity {
            return Err(ImageError::Busy);
        }
        let work = async {
            let permit = Arc::clone(&self.workers)
                .acquire_owned()
                .await
                .map_err(|_| ImageError::Busy)?;
            let handle = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                std::panic::catch_unwind(AssertUnwindSafe(job))
            });
            match handle.await {
                Ok(Ok(result)) => result,
                Ok(Err(_panic)) => {
                    // The payload may quote the file's content: never logged.
                    tracing::warn!("an image codec panicked; the request gets 422");
                    Err(ImageError::Corrupt("the decoder failed".into()))
                }
                Err(_join) => Err(ImageError::Corrupt("the decoder failed".into())),
            }
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(ImageError::TimedOut))
    }
}

/// Gives the admission slot back on every exit path.
struct Slot<'a>(&'a AtomicUsize);

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}
