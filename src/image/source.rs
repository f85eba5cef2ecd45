//! [`ObjectBytes`]: the bytes of the one object an image job reads, by range, through the cache
//! when there is one, with a budget of bytes per job (`max_source_bytes`).
//!
//! Skeleton: the helper that owns pyramids fills this in.
