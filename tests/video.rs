//! Video (`/v/{source}/{key}/...`): info.json, posters, exact frames, web.mp4, HLS, sprite.

use crate::support::video::{self, Sample};

/// The synthetic samples are what the other tests assume: every one decodes, with frames.
#[test]
fn video_samples_are_made_as_described() {
    for s in [
        Sample::H264Faststart,
        Sample::MoovAtEnd,
        Sample::Hevc,
        Sample::Vp9Webm,
        Sample::Vfr,
        Sample::Rotated,
        Sample::Mpegts,
    ] {
        let path = video::sample(s);
        let times = video::frame_times(&path);
        assert!(times.len() > 100, "{s:?}: {} frames", times.len());
        let (w, h, _) = video::reference_frame(&path, 30, Some(320));
        assert_eq!(w, 320, "{s:?}");
        let expected_h = if s == Sample::Rotated { 568 } else { 180 };
        assert_eq!(h, expected_h, "{s:?}");
    }
    // Variable frame rate: the gaps between frames are not all equal.
    let t = video::frame_times(&video::sample(Sample::Vfr));
    let gaps: Vec<f64> = t.windows(2).map(|w| w[1] - w[0]).collect();
    let (lo, hi) = gaps
        .iter()
        .fold((f64::MAX, 0.0f64), |(lo, hi), g| (lo.min(*g), hi.max(*g)));
    assert!(hi > lo * 1.5, "VFR gaps {lo}..{hi}");
}
