//! Format sniffing from magic bytes (never the key's extension), header probes that check the
//! limits before any decode, and decoding of JPEG (DCT-scaled), PNG, WebP and GIF (first frame).
//!
//! Skeleton: the helper that owns codecs fills this in.
