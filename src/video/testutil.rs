//! Helpers the video modules' unit tests share: ffmpeg for making samples, and an object of a
//! backend read as the route reads it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may; src/ may not

use std::sync::Arc;

use crate::backend::{AnyBackend, Backend, Caller, OwnedCaller};
use crate::image::source::ObjectBytes;

/// Run ffmpeg with `args` (after `-nostdin -v error -y`); panics when it fails.
pub(crate) fn ffmpeg(args: &[&str]) {
    let status = std::process::Command::new("ffmpeg")
        .args(["-nostdin", "-v", "error", "-y"])
        .args(args)
        .status()
        .unwrap();
    assert!(status.success(), "ffmpeg {args:?}");
}

/// `key` of `backend` as ranged reads of at most 64 MiB in all, as the gateway's caller.
pub(crate) async fn object(backend: &Arc<AnyBackend>, key: &str) -> ObjectBytes {
    let meta = backend.head(key, Caller::Gateway).await.unwrap();
    ObjectBytes::new(
        Arc::clone(backend),
        key.to_owned(),
        Arc::new(meta),
        OwnedCaller::Gateway,
        None,
        64 << 20,
    )
}
