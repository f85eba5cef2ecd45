//! TIFF and BigTIFF: directories, pyramid levels (SubIFDs, or one page per level), strips and
//! tiles read with ranged reads of [`ObjectBytes`](super::source::ObjectBytes), never the whole
//! file.
//!
//! Skeleton: the helper that owns pyramids fills this in.
