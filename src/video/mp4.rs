//! The MP4/MOV index, read with ranged reads and never the media data: the top-level boxes are
//! walked by their headers (`mdat` skipped, `moov` at the start or the end), `moov` is read
//! whole (bounded), and the video track's `mdhd`, `stts`, `ctts`, `stss` and edit list give
//! every frame's presentation time and the keyframes, as nginx-vod-module does.
//!
//! The times follow ffmpeg's mov demuxer (what ffprobe and `-ss` see): a sample's composition
//! time is `dts + ctts` (ctts read as signed whatever its version, as ffmpeg does); with an edit
//! list, leading empty edits delay the track, each non-empty edit `(media_time, duration)`
//! shows the samples whose composition time lies in `[media_time, media_time + duration)` at
//! the edit's place on the timeline (the others are decoded but not shown, so they are not
//! frames), and when the first shown frame would still start after the empty edits, the track
//! is shifted back to start there. Frames are numbered in presentation order.
//!
//! Everything read is bounded: the top-level walk stops after [`MAX_TOP_BOXES`] boxes, `moov`
//! is read whole only up to [`MAX_MOOV_BYTES`] (413 past it), every table's entry count is
//! checked against its box's size before anything is allocated (a count the box cannot hold is
//! 422), and a track of more than [`MAX_FRAMES`] samples is 413. Fragmented MP4 (`moof`, or
//! `mvex` in `moov`) and compressed `moov` have no usable sample tables here: [`frame_index`]
//! falls back to ffprobe's packet list for them.
//!
//! For the other containers [`frame_index`] runs `ffprobe -show_entries packet=...` through the
//! fence (it reads the whole file) and sorts the packets' times to presentation order.

use std::ffi::OsString;

use bytes::Bytes;

use super::VideoError;
use super::fence::{Fence, Tool};
use super::input::Input;
use super::probe::FrameIndex;
use super::{Container, VideoLimits};

/// Largest `moov` read whole (64 MiB: about 16 million samples' sizes).
pub const MAX_MOOV_BYTES: u64 = 64 * 1024 * 1024;
/// Most top-level boxes walked before `moov` is found.
pub const MAX_TOP_BOXES: usize = 4096;
/// Most samples in the video track (4 hours at about 280 frames per second).
pub const MAX_FRAMES: u64 = 4_000_000;
/// Largest packet list read from ffprobe (about 40 bytes a packet).
const MAX_PACKET_LIST_BYTES: usize = 160 * 1024 * 1024;

/// Ranged reads of one object (an [`Input`], or a file or buffer in tests).
pub trait ReadAt {
    /// Up to `len` bytes at `offset`, fewer only at the end.
    fn read_at(
        &self,
        offset: u64,
        len: u64,
    ) -> impl std::future::Future<Output = Result<Bytes, VideoError>> + Send;
    fn size(&self) -> u64;
}

impl ReadAt for Input {
    fn read_at(
        &self,
        offset: u64,
        len: u64,
    ) -> impl std::future::Future<Output = Result<Bytes, VideoError>> + Send {
        Input::read_at(self, offset, len)
    }

    fn size(&self) -> u64 {
        Input::size(self)
    }
}

/// The frame index of the first video track of an MP4/MOV `input`; `start_time` is the
/// format's (ffprobe's) start time, which the returned times include.
///
/// The mov demuxer's times are absolute already (the format's start time is the least of its
/// streams' first times), so `start_time` is not added again; it is part of the signature for
/// the other containers' symmetry. Fragmented or compressed movies are 415 here (use
/// [`frame_index`], which falls back to ffprobe for them).
pub async fn index(input: &Input, start_time: f64) -> Result<FrameIndex, VideoError> {
    let _ = start_time;
    match read_index(input).await? {
        Some(index) => Ok(index),
        None => Err(VideoError::Unsupported(
            "fragmented or compressed MP4 index".into(),
        )),
    }
}

/// The frame index of `input`'s first video stream, for any allowed container: [`index`] for
/// MP4/MOV (the index boxes, by ranged reads), else ffprobe's packet list (which reads the
/// whole file, bounded by the limits and the job's time).
pub async fn frame_index(
    input: &Input,
    fence: &Fence,
    container: Container,
    start_time: f64,
    limits: &VideoLimits,
) -> Result<FrameIndex, VideoError> {
    if container == Container::Mov {
        let _ = start_time;
        if let Some(index) = read_index(input).await? {
            return Ok(index);
        }
    }
    let opened = input.open(container).await?;
    let mut args: Vec<OsString> = ["-v", "error"].map(OsString::from).to_vec();
    args.extend(opened.args.iter().cloned());
    args.extend(
        [
            "-select_streams",
            "v:0",
            "-show_entries",
            "packet=pts_time,dts_time,flags",
            "-of",
            "csv=p=0:nk=0",
        ]
        .map(OsString::from),
    );
    let out = fence
        .run(
            Tool::Ffprobe,
            args,
            limits.job_timeout,
            MAX_PACKET_LIST_BYTES,
        )
        .await?;
    drop(opened);
    parse_packet_list(&out)
}

/// ffprobe's `-show_entries packet=pts_time,dts_time,flags -of csv=p=0:nk=0` lines (`key=value`
/// fields; side data adds fields and blank lines) as a frame index: each packet's pts (its dts
/// where it has none), discarded packets (`D`) left out, sorted to presentation order.
pub fn parse_packet_list(out: &[u8]) -> Result<FrameIndex, VideoError> {
    let text = String::from_utf8_lossy(out);
    let mut packets: Vec<(f64, bool)> = Vec::new();
    for line in text.lines() {
        let mut pts = None;
        let mut dts = None;
        let mut flags = None;
        for field in line.split(',') {
            match field.split_once('=') {
                Some(("pts_time", v)) => pts = v.trim().parse::<f64>().ok(),
                Some(("dts_time", v)) => dts = v.trim().parse::<f64>().ok(),
                Some(("flags", v)) => flags = Some(v.trim()),
                _ => {}
            }
        }
        let Some(flags) = flags else { continue };
        if flags.contains('D') {
            continue;
        }
        let Some(t) = pts.or(dts).filter(|t| t.is_finite()) else {
            continue;
        };
        if packets.len() as u64 >= MAX_FRAMES {
            return Err(VideoError::TooLarge(format!(
                "the video has more than {MAX_FRAMES} frames"
            )));
        }
        packets.push((t, flags.contains('K')));
    }
    if packets.is_empty() {
        return Err(VideoError::Corrupt("the video stream has no frames".into()));
    }
    packets.sort_by(|a, b| a.0.total_cmp(&b.0));
    Ok(FrameIndex {
        keyframes: packets
            .iter()
            .enumerate()
            .filter(|(_, p)| p.1)
            .map(|(i, _)| i)
            .collect(),
        pts: packets.into_iter().map(|p| p.0).collect(),
    })
}

fn corrupt(what: &str) -> VideoError {
    VideoError::Corrupt(format!("MP4 index: {what}"))
}

/// Walk the top-level boxes, read `moov`, index its first video track. `None`: a fragmented
/// or compressed movie (no sample tables to read).
pub async fn read_index<R: ReadAt>(r: &R) -> Result<Option<FrameIndex>, VideoError> {
    let size = r.size();
    let mut off: u64 = 0;
    for _ in 0..MAX_TOP_BOXES {
        if off >= size {
            break;
        }
        let head = r.read_at(off, 16).await?;
        let (typ, box_size, header) = top_header(&head, size - off)?;
        if &typ == b"moof" {
            return Ok(None);
        }
        if &typ == b"moov" {
            if box_size > MAX_MOOV_BYTES {
                return Err(VideoError::TooLarge(format!(
                    "MP4 index of {box_size} bytes (at most {MAX_MOOV_BYTES})"
                )));
            }
            if box_size > size - off {
                return Err(corrupt("moov is truncated"));
            }
            let moov = r.read_at(off, box_size).await?;
            if moov.len() as u64 != box_size {
                return Err(corrupt("moov is truncated"));
            }
            let body = moov
                .get(header..)
                .ok_or_else(|| corrupt("moov is truncated"))?;
            return parse_moov(body);
        }
        match off.checked_add(box_size) {
            // A box running past the end (a truncated mdat): nothing after it.
            Some(end) if end <= size => off = end,
            _ => break,
        }
    }
    Err(corrupt("no moov box"))
}

/// A top-level box header: (type, size including the header, header length). `left` is the
/// bytes from the box's start to the end of the object (a size of 0 means "to the end").
fn top_header(head: &[u8], left: u64) -> Result<([u8; 4], u64, usize), VideoError> {
    if head.len() < 8 {
        return Err(corrupt("truncated box header"));
    }
    let size32 = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    let typ = [head[4], head[5], head[6], head[7]];
    let (size, header) = match size32 {
        0 => (left, 8),
        1 => {
            let b = head
                .get(8..16)
                .ok_or_else(|| corrupt("truncated box header"))?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            (u64::from_be_bytes(a), 16)
        }
        n => (u64::from(n), 8),
    };
    if size < header as u64 {
        return Err(corrupt("box smaller than its header"));
    }
    Ok((typ, size, header))
}

/// The child boxes of a box body: (type, body), each within the parent's bounds.
struct Boxes<'a> {
    rest: &'a [u8],
}

fn boxes(body: &[u8]) -> Boxes<'_> {
    Boxes { rest: body }
}

impl<'a> Iterator for Boxes<'a> {
    type Item = Result<([u8; 4], &'a [u8]), VideoError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        // Some writers pad a container with zero bytes (fewer than a header): the end.
        if self.rest.len() < 8 {
            self.rest = &[];
            return None;
        }
        let parsed = top_header(self.rest, self.rest.len() as u64).and_then(|(typ, size, hdr)| {
            let size = usize::try_from(size).map_err(|_| corrupt("box runs past its parent"))?;
            if size > self.rest.len() {
                return Err(corrupt("box runs past its parent"));
            }
            let body = &self.rest[hdr..size];
            self.rest = &self.rest[size..];
            Ok((typ, body))
        });
        if parsed.is_err() {
            self.rest = &[];
        }
        Some(parsed)
    }
}

/// The first child of type `typ`, if any.
fn child<'a>(body: &'a [u8], typ: &[u8; 4]) -> Result<Option<&'a [u8]>, VideoError> {
    for b in boxes(body) {
        let (t, b) = b?;
        if &t == typ {
            return Ok(Some(b));
        }
    }
    Ok(None)
}

/// Big-endian readers over a full box's body, every read bounds-checked.
struct Cursor<'a> {
    buf: &'a [u8],
    pos: usize,
    what: &'static str,
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8], what: &'static str) -> Cursor<'a> {
        Cursor { buf, pos: 0, what }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], VideoError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.buf.len())
            .ok_or_else(|| VideoError::Corrupt(format!("MP4 index: {} is truncated", self.what)))?;
        let s = &self.buf[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8, VideoError> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, VideoError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, VideoError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, VideoError> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }

    /// Version and flags of a full box: the version.
    fn version(&mut self) -> Result<u8, VideoError> {
        let v = self.u8()?;
        self.take(3)?;
        Ok(v)
    }

    /// An entry count whose `entry` bytes each must fit in what is left.
    fn count(&mut self, entry: usize) -> Result<usize, VideoError> {
        let n = self.u32()? as usize;
        let left = self.buf.len() - self.pos;
        if n.checked_mul(entry).is_none_or(|need| need > left) {
            return Err(VideoError::Corrupt(format!(
                "MP4 index: {} declares {n} entries its box cannot hold",
                self.what
            )));
        }
        Ok(n)
    }
}

/// One entry of an edit list, in the track's timescale (durations converted from the movie's).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Edit {
    duration: i64,
    /// -1: an empty edit.
    media_time: i64,
}

/// The tables of one video track.
#[derive(Debug, Default)]
struct Track {
    timescale: u32,
    samples: u64,
    /// (count, delta)
    stts: Vec<(u32, u32)>,
    /// (count, offset), offsets signed.
    ctts: Vec<(u32, i32)>,
    /// 1-based sample numbers; None: every sample is a keyframe.
    stss: Option<Vec<u32>>,
    edits: Vec<Edit>,
}

fn parse_moov(moov: &[u8]) -> Result<Option<FrameIndex>, VideoError> {
    if child(moov, b"cmov")?.is_some() || child(moov, b"mvex")?.is_some() {
        return Ok(None);
    }
    let mvhd = child(moov, b"mvhd")?.ok_or_else(|| corrupt("no mvhd"))?;
    let movie_timescale = {
        let mut c = Cursor::new(mvhd, "mvhd");
        let v = c.version()?;
        c.take(if v == 1 { 16 } else { 8 })?;
        c.u32()?
    };
    for b in boxes(moov) {
        let (t, trak) = b?;
        if &t != b"trak" {
            continue;
        }
        let Some(mdia) = child(trak, b"mdia")? else {
            continue;
        };
        let Some(hdlr) = child(mdia, b"hdlr")? else {
            continue;
        };
        let mut c = Cursor::new(hdlr, "hdlr");
        c.version()?;
        c.take(4)?;
        if c.take(4)? != b"vide" {
            continue;
        }
        let track = parse_track(trak, mdia, movie_timescale)?;
        return build(&track).map(Some);
    }
    Err(VideoError::NoSuchPart(
        "the video has no video track".into(),
    ))
}

fn parse_track(trak: &[u8], mdia: &[u8], movie_timescale: u32) -> Result<Track, VideoError> {
    let mut track = Track::default();
    let mdhd = child(mdia, b"mdhd")?.ok_or_else(|| corrupt("no mdhd"))?;
    let mut c = Cursor::new(mdhd, "mdhd");
    let v = c.version()?;
    c.take(if v == 1 { 16 } else { 8 })?;
    track.timescale = c.u32()?;
    if track.timescale == 0 {
        return Err(corrupt("mdhd timescale is 0"));
    }
    let stbl = child(mdia, b"minf")?
        .map(|minf| child(minf, b"stbl"))
        .transpose()?
        .flatten()
        .ok_or_else(|| corrupt("no sample table"))?;

    // Sample count: stsz (or the compact stz2).
    if let Some(stsz) = child(stbl, b"stsz")? {
        let mut c = Cursor::new(stsz, "stsz");
        c.version()?;
        let sample_size = c.u32()?;
        track.samples = if sample_size == 0 {
            c.count(4)? as u64
        } else {
            u64::from(c.u32()?)
        };
    } else if let Some(stz2) = child(stbl, b"stz2")? {
        let mut c = Cursor::new(stz2, "stz2");
        c.version()?;
        c.take(3)?;
        let field = usize::from(c.u8()?);
        let n = c.u32()? as usize;
        let need = n
            .checked_mul(field)
            .map(|bits| bits.div_ceil(8))
            .ok_or_else(|| corrupt("stz2 declares entries its box cannot hold"))?;
        if ![4, 8, 16].contains(&field) || need > stz2.len() - 12 {
            return Err(corrupt("stz2 declares entries its box cannot hold"));
        }
        track.samples = n as u64;
    } else {
        return Err(corrupt("no stsz"));
    }
    if track.samples == 0 {
        return Err(VideoError::Corrupt("the video track has no samples".into()));
    }
    if track.samples > MAX_FRAMES {
        return Err(VideoError::TooLarge(format!(
            "the video has more than {MAX_FRAMES} frames"
        )));
    }

    let stts = child(stbl, b"stts")?.ok_or_else(|| corrupt("no stts"))?;
    let mut c = Cursor::new(stts, "stts");
    c.version()?;
    let n = c.count(8)?;
    track.stts.reserve(n);
    for _ in 0..n {
        track.stts.push((c.u32()?, c.u32()?));
    }

    if let Some(ctts) = child(stbl, b"ctts")? {
        let mut c = Cursor::new(ctts, "ctts");
        c.version()?;
        let n = c.count(8)?;
        track.ctts.reserve(n);
        for _ in 0..n {
            // Signed whatever the version: writers put negative offsets in version 0 too.
            track.ctts.push((c.u32()?, c.u32()? as i32));
        }
    }

    if let Some(stss) = child(stbl, b"stss")? {
        let mut c = Cursor::new(stss, "stss");
        c.version()?;
        let n = c.count(4)?;
        // An empty stss: ffmpeg treats every sample as a keyframe.
        if n > 0 {
            let mut v = Vec::with_capacity(n);
            for _ in 0..n {
                v.push(c.u32()?);
            }
            track.stss = Some(v);
        }
    }

    if let Some(elst) = child(trak, b"edts")?
        .map(|edts| child(edts, b"elst"))
        .transpose()?
        .flatten()
    {
        let mut c = Cursor::new(elst, "elst");
        let v = c.version()?;
        let n = c.count(if v == 1 { 20 } else { 12 })?;
        for _ in 0..n {
            let (duration, media_time) = if v == 1 {
                (c.u64()?, c.u64()? as i64)
            } else {
                (u64::from(c.u32()?), i64::from(c.u32()? as i32))
            };
            c.u16()?;
            c.u16()?;
            // The edit's duration is in the movie's timescale.
            let duration = if movie_timescale == 0 {
                0
            } else {
                let d = i128::from(duration) * i128::from(track.timescale)
                    / i128::from(movie_timescale);
                i64::try_from(d).map_err(|_| corrupt("edit duration out of range"))?
            };
            track.edits.push(Edit {
                duration,
                media_time,
            });
        }
    }
    Ok(track)
}

/// Presentation times and keyframes from the tables.
fn build(track: &Track) -> Result<FrameIndex, VideoError> {
    let n = usize::try_from(track.samples).map_err(|_| corrupt("sample count"))?;
    // Composition times (dts + ctts), sample order.
    let mut cts: Vec<i64> = Vec::with_capacity(n);
    let mut dts: i64 = 0;
    'stts: for &(count, delta) in &track.stts {
        for _ in 0..count {
            if cts.len() == n {
                break 'stts;
            }
            cts.push(dts);
            dts = dts.saturating_add(i64::from(delta));
        }
    }
    if cts.len() < n {
        return Err(corrupt("stts covers fewer samples than stsz"));
    }
    let mut i = 0usize;
    'ctts: for &(count, offset) in &track.ctts {
        for _ in 0..count {
            let Some(t) = cts.get_mut(i) else {
                break 'ctts;
            };
            *t = t.saturating_add(i64::from(offset));
            i += 1;
        }
    }
    let mut key = vec![track.stss.is_none(); n];
    for &s in track.stss.iter().flatten() {
        if let Some(k) = (s as usize).checked_sub(1).and_then(|i| key.get_mut(i)) {
            *k = true;
        }
    }

    // (presentation ticks, keyframe), after the edit list.
    let mut shown: Vec<(i64, bool)> = Vec::with_capacity(n);
    let mut place: i64 = 0;
    let mut empty_lead: i64 = 0;
    let mut found_non_empty = false;
    for edit in &track.edits {
        let start = place;
        place = place.saturating_add(edit.duration);
        if edit.media_time < 0 {
            if !found_non_empty {
                empty_lead = empty_lead.saturating_add(edit.duration);
            }
            continue;
        }
        found_non_empty = true;
        // A zero duration: to the end of the media.
        let end = if edit.duration > 0 {
            edit.media_time.saturating_add(edit.duration)
        } else {
            i64::MAX
        };
        for (i, &t) in cts.iter().enumerate() {
            if t >= edit.media_time && t < end {
                if shown.len() as u64 >= MAX_FRAMES {
                    return Err(VideoError::TooLarge(format!(
                        "the video has more than {MAX_FRAMES} frames"
                    )));
                }
                shown.push((t - edit.media_time + start, key[i]));
            }
        }
    }
    if !found_non_empty {
        // No edit list (or only empty edits): every sample as is, after the delay.
        shown = cts
            .iter()
            .zip(&key)
            .map(|(t, k)| (t.saturating_add(empty_lead), *k))
            .collect();
    }
    if shown.is_empty() {
        return Err(VideoError::Corrupt(
            "the video track shows no frames".into(),
        ));
    }
    // ffmpeg shifts a video track that would start after its empty edits back to start there.
    if !track.edits.is_empty()
        && let Some(min) = shown.iter().map(|s| s.0).min()
    {
        let late = min - empty_lead;
        if late > 0 {
            for s in &mut shown {
                s.0 -= late;
            }
        }
    }
    shown.sort_by_key(|s| s.0);
    let scale = f64::from(track.timescale);
    Ok(FrameIndex {
        keyframes: shown
            .iter()
            .enumerate()
            .filter(|(_, s)| s.1)
            .map(|(i, _)| i)
            .collect(),
        pts: shown.iter().map(|s| s.0 as f64 / scale).collect(),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// A box: size, type, body.
    fn bx(typ: &[u8; 4], body: &[u8]) -> Vec<u8> {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(typ);
        v.extend_from_slice(body);
        v
    }

    fn full(typ: &[u8; 4], version: u8, body: &[u8]) -> Vec<u8> {
        let mut b = vec![version, 0, 0, 0];
        b.extend_from_slice(body);
        bx(typ, &b)
    }

    fn be(words: &[u32]) -> Vec<u8> {
        words.iter().flat_map(|w| w.to_be_bytes()).collect()
    }

    struct Buf(Vec<u8>, std::sync::atomic::AtomicU64);

    impl ReadAt for Buf {
        async fn read_at(&self, offset: u64, len: u64) -> Result<Bytes, VideoError> {
            self.1.fetch_add(
                len.min(self.size().saturating_sub(offset)),
                std::sync::atomic::Ordering::Relaxed,
            );
            let s = (offset as usize).min(self.0.len());
            let e = (offset.saturating_add(len) as usize).min(self.0.len());
            Ok(Bytes::copy_from_slice(&self.0[s..e]))
        }
        fn size(&self) -> u64 {
            self.0.len() as u64
        }
    }

    fn buf(v: Vec<u8>) -> Buf {
        Buf(v, std::sync::atomic::AtomicU64::new(0))
    }

    /// A movie of one video track with these tables (timescale 100, movie timescale 1000).
    fn movie(stbl_extra: &[Vec<u8>], samples: u32, stts: &[u32], edts: Option<Vec<u8>>) -> Vec<u8> {
        let mut stbl = Vec::new();
        stbl.extend(full(b"stsz", 0, &be(&[7, samples])));
        let mut st = vec![(stts.len() / 2) as u32];
        st.extend_from_slice(stts);
        stbl.extend(full(b"stts", 0, &be(&st)));
        for e in stbl_extra {
            stbl.extend_from_slice(e);
        }
        let minf = bx(b"minf", &bx(b"stbl", &stbl));
        let mut mdia = full(b"mdhd", 0, &be(&[0, 0, 100, 0, 0]));
        mdia.extend(full(
            b"hdlr",
            0,
            &[0, 0, 0, 0, b'v', b'i', b'd', b'e', 0, 0, 0, 0],
        ));
        mdia.extend(minf);
        let mut trak = edts.map(|e| bx(b"edts", &e)).unwrap_or_default();
        trak.extend(bx(b"mdia", &mdia));
        let mut moov = full(b"mvhd", 0, &be(&[0, 0, 1000, 0]));
        moov.extend(bx(b"trak", &trak));
        let mut file = bx(b"ftyp", b"isom\0\0\0\0");
        file.extend(bx(b"mdat", &[0u8; 1000]));
        file.extend(bx(b"moov", &moov));
        file
    }

    fn run(file: Vec<u8>) -> Result<Option<FrameIndex>, VideoError> {
        let b = buf(file);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(read_index(&b))
    }

    #[test]
    fn no_stss_every_frame_is_a_keyframe_and_mdat_is_not_read() {
        let b = buf(movie(&[], 4, &[4, 10], None));
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let idx = rt.block_on(read_index(&b)).unwrap().unwrap();
        assert_eq!(idx.pts, vec![0.0, 0.1, 0.2, 0.3]);
        assert_eq!(idx.keyframes, vec![0, 1, 2, 3]);
        // Headers of ftyp and mdat (16 bytes each), then moov whole: never the 1000 media bytes.
        assert!(b.1.load(std::sync::atomic::Ordering::Relaxed) < 400);
    }

    #[test]
    fn ctts_reorders_and_edit_list_shifts() {
        // Decode order I P B B (dts 0, 10, 20, 30), signed offsets: cts 0, 30, 10, 20.
        let ctts = || full(b"ctts", 1, &be(&[1, 0, 1, 20, 2, (-10i32) as u32]));
        let stss = || full(b"stss", 0, &be(&[1, 1]));
        // An empty edit of 500 ms (movie timescale) = 50 ticks, then the media from `from`.
        let elst = |from: u32| {
            full(
                b"elst",
                0,
                &be(&[2, 500, u32::MAX, 1 << 16, 1000, from, 1 << 16]),
            )
        };
        let idx = run(movie(&[ctts(), stss()], 4, &[4, 10], Some(elst(0))))
            .unwrap()
            .unwrap();
        assert_eq!(idx.pts, vec![0.5, 0.6, 0.7, 0.8]);
        assert_eq!(idx.keyframes, vec![0]);
        // The edit starts at media time 10: the keyframe (cts 0) is decoded but not shown.
        let idx = run(movie(&[ctts(), stss()], 4, &[4, 10], Some(elst(10))))
            .unwrap()
            .unwrap();
        assert_eq!(idx.pts, vec![0.5, 0.6, 0.7]);
        assert_eq!(idx.keyframes, Vec::<usize>::new());
        // No edit list: composition times as they are.
        let idx = run(movie(&[ctts()], 4, &[4, 10], None)).unwrap().unwrap();
        assert_eq!(idx.pts, vec![0.0, 0.1, 0.2, 0.3]);
    }

    #[test]
    fn hostile_counts_are_corrupt_not_allocations() {
        // stts claims 2^31 entries in a 16-byte box.
        let mut file = movie(&[], 4, &[4, 10], None);
        let pos = file.windows(4).position(|w| w == b"stts").unwrap();
        file[pos + 8..pos + 12].copy_from_slice(&0x8000_0000u32.to_be_bytes());
        assert!(matches!(run(file), Err(VideoError::Corrupt(_))));
        // A huge constant-size stsz count.
        let file = movie(&[], u32::MAX, &[u32::MAX, 10], None);
        assert!(matches!(run(file), Err(VideoError::TooLarge(_))));
        // A child box larger than its parent.
        let mut file = movie(&[], 4, &[4, 10], None);
        let pos = file.windows(4).position(|w| w == b"mdia").unwrap();
        file[pos - 4..pos].copy_from_slice(&0x7fff_0000u32.to_be_bytes());
        assert!(matches!(run(file), Err(VideoError::Corrupt(_))));
        // No moov at all.
        let file = bx(b"ftyp", b"isom\0\0\0\0");
        assert!(matches!(run(file), Err(VideoError::Corrupt(_))));
        // Truncated moov.
        let mut file = movie(&[], 4, &[4, 10], None);
        file.truncate(file.len() - 10);
        assert!(matches!(run(file), Err(VideoError::Corrupt(_))));
    }

    #[test]
    fn fragmented_falls_back() {
        let mut file = bx(b"ftyp", b"isom\0\0\0\0");
        file.extend(bx(b"moov", &bx(b"mvex", &[])));
        assert_eq!(run(file).unwrap(), None);
        let mut file = bx(b"ftyp", b"isom\0\0\0\0");
        file.extend(bx(b"moof", &[]));
        assert_eq!(run(file).unwrap(), None);
    }

    #[test]
    fn packet_list_with_side_data_and_discards() {
        let out = b"pts_time=1.560000,dts_time=1.480000,flags=__,\n\npts_time=1.480000,dts_time=1.440000,flags=K_,side_data,\n\npts_time=N/A,dts_time=1.600000,flags=__\npts_time=1.400000,dts_time=1.400000,flags=_D\n";
        let idx = parse_packet_list(out).unwrap();
        assert_eq!(idx.pts, vec![1.48, 1.56, 1.6]);
        assert_eq!(idx.keyframes, vec![0]);
        assert!(matches!(
            parse_packet_list(b""),
            Err(VideoError::Corrupt(_))
        ));
    }
}
