//! Scrubbing previews: `sprite.jpg`, a grid of small thumbnails taken at even times (each from
//! the keyframe nearest its time, so the whole video is not decoded), and `sprite.vtt`, a WebVTT
//! thumbnail track whose cues name each cell (`sprite.jpg#xywh=x,y,w,h`).
//!
//! The grid ([`Grid::of`]) depends on the probe alone, so the image and the track agree without
//! either being made first: one cell per `interval` seconds (the duration / 100 rounded up, at
//! least 1 s; so at most 100 cells), [`CELL_WIDTH`] wide, the height keeping the displayed
//! aspect (rotation applied) and even, [`COLUMNS`] to a row. Cell i shows the keyframe whose
//! time is nearest `i * interval` (from the probe's frame index).
//!
//! One ffmpeg child makes the cells: `-discard nokey -skip_frame nokey` (only keyframes are
//! read and decoded), a `select` of the wanted keyframes' times (`-copyts`, so times are the
//! index's), scaled, as raw RGB on stdout; the grid is laid out and encoded as JPEG here, off
//! the async threads. A keyframe the decoder did not deliver (the count of cells is off) reruns
//! the select on every frame, within the same time limit.
//!
//! Measured on a 10-minute 1280x720 H.264 MP4 (490 MB, a keyframe every 2 s, 100 cells), the
//! same ffmpeg 5.1: this child 1.5 s; without `-discard nokey` 4.4 s (every packet read);
//! one `-ss T -noaccurate_seek -frames:v 1` child per cell 43 s in all; decoding every frame
//! 49.6 s.

use bytes::Bytes;

use super::fence::Tool;
use super::probe::VideoProbe;
use super::{Job, VideoError};

/// Width of one cell, pixels.
pub const CELL_WIDTH: u32 = 160;
/// Cells in a row.
pub const COLUMNS: u32 = 10;
/// Most cells in a sprite.
pub const MAX_CELLS: u32 = 100;
/// Tallest cell (a very tall video's cells are squeezed to this).
pub const MAX_CELL_HEIGHT: u32 = 360;
/// JPEG quality of the sprite.
const QUALITY: u8 = 80;

/// The layout of a sprite, from the probe alone.
#[derive(Debug, Clone, PartialEq)]
pub struct Grid {
    /// Seconds between cells.
    pub interval: u32,
    pub cells: u32,
    pub columns: u32,
    pub rows: u32,
    pub cell_width: u32,
    pub cell_height: u32,
    /// The video's duration, seconds (the last cue ends there).
    pub duration: f64,
}

impl Grid {
    pub fn of(probe: &VideoProbe) -> Result<Grid, VideoError> {
        let video = probe
            .video
            .and_then(|i| probe.streams.get(i))
            .ok_or_else(|| VideoError::NoSuchPart("the source has no video stream".into()))?;
        let (width, height) = match (video.width, video.height) {
            (Some(w), Some(h)) if w > 0 && h > 0 => (w, h),
            _ => return Err(VideoError::Corrupt("the video stream has no size".into())),
        };
        let (width, height) = if video.rotation.rem_euclid(180) == 90 {
            (height, width)
        } else {
            (width, height)
        };
        let tall = f64::from(CELL_WIDTH) * f64::from(height) / f64::from(width);
        let cell_height = (((tall / 2.0).round() as u32) * 2).clamp(2, MAX_CELL_HEIGHT);
        let duration = if probe.duration.is_finite() && probe.duration > 0.0 {
            probe.duration
        } else {
            0.0
        };
        let interval = ((duration / f64::from(MAX_CELLS)).ceil() as u32).max(1);
        let cells = ((duration / f64::from(interval)).ceil() as u32).clamp(1, MAX_CELLS);
        let columns = cells.min(COLUMNS);
        Ok(Grid {
            interval,
            cells,
            columns,
            rows: cells.div_ceil(columns),
            cell_width: CELL_WIDTH,
            cell_height,
            duration,
        })
    }

    /// The sprite's size, pixels.
    pub fn size(&self) -> (u32, u32) {
        (self.columns * self.cell_width, self.rows * self.cell_height)
    }

    /// The top-left corner of cell `i`.
    pub fn origin(&self, i: u32) -> (u32, u32) {
        (
            (i % self.columns) * self.cell_width,
            (i / self.columns) * self.cell_height,
        )
    }

    /// When cell `i`'s cue starts and ends, seconds from the start.
    pub fn span(&self, i: u32) -> (f64, f64) {
        let start = f64::from(i * self.interval);
        let end = f64::from((i + 1) * self.interval).min(self.duration);
        (
            start,
            if end > start {
                end
            } else {
                start + f64::from(self.interval)
            },
        )
    }
}

/// For each cell, which of the wanted keyframes it shows; and the wanted keyframes' times
/// (ascending, distinct, as the index has them). Cell i shows the keyframe nearest
/// `start_time + i * interval`.
fn keyframes_for(grid: &Grid, probe: &VideoProbe) -> Result<(Vec<usize>, Vec<f64>), VideoError> {
    let index = probe
        .frames
        .as_ref()
        .ok_or_else(|| VideoError::NoSuchPart("the source has no video stream".into()))?;
    let times: Vec<f64> = index
        .keyframes
        .iter()
        .filter_map(|&n| index.pts.get(n).copied())
        .collect();
    if times.is_empty() {
        return Err(VideoError::Corrupt("the video has no keyframes".into()));
    }
    let mut chosen = Vec::with_capacity(grid.cells as usize);
    for i in 0..grid.cells {
        let want = probe.start_time + f64::from(i * grid.interval);
        // The first keyframe at or after `want`, or the one before it, whichever is nearer.
        let after = times.partition_point(|&t| t < want);
        let pick = match (after.checked_sub(1), times.get(after)) {
            (Some(before), Some(&t)) if want - times[before] <= t - want => before,
            (Some(before), None) => before,
            _ => after,
        };
        chosen.push(pick);
    }
    let mut wanted: Vec<usize> = chosen.clone();
    wanted.dedup();
    let cell_of = chosen
        .iter()
        .map(|k| wanted.partition_point(|w| w < k))
        .collect();
    Ok((cell_of, wanted.into_iter().map(|k| times[k]).collect()))
}

/// `select` keeping the frames at `times` (a third of the nearest neighbour's distance either
/// side, at most 20 ms).
fn select_filter(times: &[f64], all_keyframes: &[f64], grid: &Grid) -> String {
    let gap = all_keyframes
        .windows(2)
        .map(|w| w[1] - w[0])
        .filter(|g| *g > 0.0)
        .fold(f64::INFINITY, f64::min);
    let eps = (gap / 3.0).min(0.02);
    let terms: Vec<String> = times
        .iter()
        .map(|t| format!("between(t\\,{:.6}\\,{:.6})", t - eps, t + eps))
        .collect();
    format!(
        "select='{}',scale={}:{}:flags=bicubic,setsar=1",
        terms.join("+"),
        grid.cell_width,
        grid.cell_height
    )
}

/// The grid.
pub async fn sprite(job: &Job<'_>) -> Result<Bytes, VideoError> {
    let grid = Grid::of(job.probe)?;
    let (cell_of, times) = keyframes_for(&grid, job.probe)?;
    let all_keyframes: Vec<f64> = job
        .probe
        .frames
        .as_ref()
        .map(|i| {
            i.keyframes
                .iter()
                .filter_map(|&n| i.pts.get(n).copied())
                .collect()
        })
        .unwrap_or_default();
    let filter = select_filter(&times, &all_keyframes, &grid);
    let cell_bytes = (grid.cell_width * grid.cell_height * 3) as usize;
    let expected = cell_bytes * times.len();
    let deadline = tokio::time::Instant::now() + job.limits.job_timeout;
    let mut raw = cells(job, &filter, true, expected + cell_bytes, deadline).await?;
    if raw.len() != expected {
        // The decoder skipped a frame the index calls a keyframe: decode them all.
        tracing::debug!(
            got = raw.len() / cell_bytes,
            want = times.len(),
            "sprite keyframes missing with skip_frame; decoding every frame"
        );
        raw = cells(job, &filter, false, expected + cell_bytes, deadline).await?;
    }
    if raw.len() != expected {
        return Err(VideoError::Corrupt(
            "the video's keyframes could not be decoded".into(),
        ));
    }
    tokio::task::spawn_blocking(move || lay_out(&grid, &cell_of, &raw))
        .await
        .map_err(|_| VideoError::Unavailable("the sprite task failed".into()))?
}

/// ffmpeg's raw RGB cells (one per wanted keyframe, in time order).
async fn cells(
    job: &Job<'_>,
    filter: &str,
    keyframes_only: bool,
    max_stdout: usize,
    deadline: tokio::time::Instant,
) -> Result<Vec<u8>, VideoError> {
    let mut opened = job.input.open(job.probe.container).await?;
    let mut args: Vec<std::ffi::OsString> = Vec::new();
    if keyframes_only {
        // The demuxer drops the other packets unread (mov skips their bytes), the decoder
        // decodes keyframes only.
        args.extend(["-discard", "nokey", "-skip_frame", "nokey"].map(Into::into));
    }
    args.push("-copyts".into());
    args.extend(std::mem::take(&mut opened.args));
    args.extend(
        [
            "-map",
            "0:v:0",
            "-vf",
            filter,
            "-fps_mode",
            "passthrough",
            "-f",
            "rawvideo",
            "-pix_fmt",
            "rgb24",
            "pipe:1",
        ]
        .map(Into::into),
    );
    let left = deadline.saturating_duration_since(tokio::time::Instant::now());
    if left.is_zero() {
        return Err(VideoError::TimedOut);
    }
    let out = job
        .work
        .fence
        .run(Tool::Ffmpeg, args, left, max_stdout)
        .await;
    drop(opened);
    out
}

/// The cells placed in the grid (unused cells black), as JPEG.
fn lay_out(grid: &Grid, cell_of: &[usize], raw: &[u8]) -> Result<Bytes, VideoError> {
    let (width, height) = grid.size();
    let (cw, ch) = (grid.cell_width as usize, grid.cell_height as usize);
    let stride = width as usize * 3;
    let mut image = vec![0u8; stride * height as usize];
    for (i, &k) in cell_of.iter().enumerate() {
        let (x, y) = grid.origin(i as u32);
        let cell = raw
            .get(k * cw * ch * 3..(k + 1) * cw * ch * 3)
            .ok_or_else(|| VideoError::Corrupt("sprite cell missing".into()))?;
        for row in 0..ch {
            let from = &cell[row * cw * 3..(row + 1) * cw * 3];
            let at = (y as usize + row) * stride + x as usize * 3;
            if let Some(to) = image.get_mut(at..at + cw * 3) {
                to.copy_from_slice(from);
            }
        }
    }
    let (Ok(w16), Ok(h16)) = (u16::try_from(width), u16::try_from(height)) else {
        return Err(VideoError::Corrupt("sprite too large".into()));
    };
    let mut out = Vec::new();
    jpeg_encoder::Encoder::new(&mut out, QUALITY)
        .encode(&image, w16, h16, jpeg_encoder::ColorType::Rgb)
        .map_err(|e| VideoError::Corrupt(format!("sprite encoding failed: {e}")))?;
    Ok(Bytes::from(out))
}

/// `H:MM:SS.mmm` as WebVTT wants it (hours at least two digits).
fn timestamp(secs: f64) -> String {
    let ms = (secs.max(0.0) * 1000.0).round() as u64;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        ms / 3_600_000,
        ms / 60_000 % 60,
        ms / 1000 % 60,
        ms % 1000
    )
}

/// The WebVTT track (links made with `job.links`).
pub fn vtt(job: &Job<'_>) -> Result<String, VideoError> {
    let grid = Grid::of(job.probe)?;
    // The token query (if any) precedes the fragment: `sprite.jpg?token=...#xywh=...`.
    let image = job.links.to("sprite.jpg");
    let mut out = String::from("WEBVTT\n");
    for i in 0..grid.cells {
        let (start, end) = grid.span(i);
        let (x, y) = grid.origin(i);
        out.push_str(&format!(
            "\n{} --> {}\n{image}#xywh={x},{y},{},{}\n",
            timestamp(start),
            timestamp(end),
            grid.cell_width,
            grid.cell_height
        ));
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)] // tests may unwrap; src/ may not
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::video::Container;
    use crate::video::probe::{FrameIndex, StreamInfo, StreamKind};

    fn probe(duration: f64, width: u32, height: u32, rotation: i32) -> VideoProbe {
        let fps = 25.0;
        let frames = (duration * fps) as usize;
        VideoProbe {
            container: Container::Mov,
            format_name: "mov,mp4,m4a,3gp,3g2,mj2".into(),
            duration,
            start_time: 0.0,
            bit_rate: None,
            size: 1,
            streams: vec![StreamInfo {
                index: 0,
                kind: StreamKind::Video,
                codec: "h264".into(),
                profile: None,
                width: Some(width),
                height: Some(height),
                rotation,
                frame_rate: Some(fps),
                pix_fmt: Some("yuv420p".into()),
                bit_rate: None,
                channels: None,
                sample_rate: None,
            }],
            video: Some(0),
            frames: Some(Arc::new(FrameIndex {
                pts: (0..frames).map(|n| n as f64 / fps).collect(),
                keyframes: (0..frames).step_by(50).collect(),
            })),
            browser_ready: true,
        }
    }

    #[test]
    fn sprite_grid_of_a_short_video_has_a_cell_a_second() {
        let grid = Grid::of(&probe(12.0, 640, 360, 0)).expect("grid");
        assert_eq!(
            grid,
            Grid {
                interval: 1,
                cells: 12,
                columns: 10,
                rows: 2,
                cell_width: 160,
                cell_height: 90,
                duration: 12.0
            }
        );
        assert_eq!(grid.size(), (1600, 180));
        assert_eq!(grid.origin(11), (160, 90));
        assert_eq!(grid.span(11), (11.0, 12.0));
    }

    #[test]
    fn sprite_grid_of_a_long_video_stays_within_100_cells_and_covers_it() {
        for duration in [99.5, 100.0, 149.0, 600.0, 7200.0, 7201.0] {
            let grid = Grid::of(&probe(duration, 1920, 1080, 0)).expect("grid");
            assert!(grid.cells <= 100, "{duration}: {grid:?}");
            assert!(
                f64::from(grid.cells * grid.interval) >= duration,
                "{grid:?}"
            );
            assert!(grid.span(grid.cells - 1).1 <= duration);
        }
        let grid = Grid::of(&probe(7200.0, 1920, 1080, 0)).expect("grid");
        assert_eq!((grid.interval, grid.cells, grid.rows), (72, 100, 10));
    }

    #[test]
    fn sprite_grid_of_a_rotated_video_is_upright_and_even() {
        let grid = Grid::of(&probe(12.0, 640, 360, 90)).expect("grid");
        assert_eq!((grid.cell_width, grid.cell_height), (160, 284));
        let odd = Grid::of(&probe(12.0, 641, 359, 0)).expect("grid");
        assert_eq!(odd.cell_height % 2, 0);
        let tall = Grid::of(&probe(12.0, 16, 8000, 0)).expect("grid");
        assert_eq!(tall.cell_height, MAX_CELL_HEIGHT);
    }

    #[test]
    fn sprite_cells_show_the_nearest_keyframe() {
        let p = probe(12.0, 640, 360, 0);
        let grid = Grid::of(&p).expect("grid");
        let (cell_of, times) = keyframes_for(&grid, &p).expect("keyframes");
        // Keyframes every 2 s: 1 s is as near 0 as 2 (the earlier wins), 3 s -> 2 s, ...
        assert_eq!(times, vec![0.0, 2.0, 4.0, 6.0, 8.0, 10.0]);
        assert_eq!(cell_of, vec![0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5]);
    }

    #[test]
    fn sprite_vtt_names_each_cell_with_the_token_before_the_fragment() {
        let root = tempfile::tempdir().expect("tmp");
        let tools = crate::video::Tools {
            ffmpeg: Err("none".into()),
            ffprobe: Err("none".into()),
        };
        let work = crate::video::Work::new(
            crate::video::fence::Fence::new(tools, 1, 1),
            crate::video::web::Store::new(root.path().join("s"), 1).expect("store"),
            1,
        );
        let input = crate::video::input::Input::new(
            crate::video::input::Origin::File(root.path().join("x.mp4")),
            1,
        );
        let p = probe(12.0, 640, 360, 0);
        let limits = crate::video::VideoLimits::default();
        let links = crate::video::Links {
            base: "/v/src/a%2Fb.mp4/".into(),
            query: Some("token=abc".into()),
        };
        let job = Job {
            input: &input,
            probe: &p,
            limits: &limits,
            work: &work,
            links: &links,
        };
        let vtt = vtt(&job).expect("vtt");
        assert!(vtt.starts_with("WEBVTT\n\n00:00:00.000 --> 00:00:01.000\n"));
        assert_eq!(vtt.matches(" --> ").count(), 12);
        assert!(vtt.contains(
            "00:00:11.000 --> 00:00:12.000\n/v/src/a%2Fb.mp4/sprite.jpg?token=abc#xywh=160,90,160,90\n"
        ));
    }

    #[test]
    fn sprite_vtt_timestamps_are_webvtt() {
        assert_eq!(timestamp(0.0), "00:00:00.000");
        assert_eq!(timestamp(3723.5), "01:02:03.500");
        assert_eq!(timestamp(12.0), "00:00:12.000");
    }
}
