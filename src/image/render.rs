//! Crop, resample (fast_image_resize, Lanczos3), EXIF orientation, mirror and rotation, quality
//! (gray, bitonal) and encoding (jpg, png, webp). Outputs carry none of the source's metadata.
//!
//! Skeleton: the helper that owns codecs fills this in.
