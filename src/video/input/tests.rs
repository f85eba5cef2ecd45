//! The input with real files and real ffprobe: sniffing, the fs path checks, keys that look like
//! options or protocols, and the loopback feed (over an fs backend's ranged reads: the same
//! [`ObjectBytes`] an S3 source uses).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)] // tests may; src/ may not

use std::ffi::OsString;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use super::*;
use crate::backend::fs::FsBackend;
use crate::backend::{AnyBackend, BackendError};
use crate::video::fence::{Fence, Tool};
use crate::video::testutil::{ffmpeg, object};
use crate::video::{Tools, VideoError};

/// A 1 s 64x64 H.264 MP4 and the same in MKV, AVI and TS, made once per test process.
fn samples() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path();
        let mp4 = p.join("a.mp4");
        ffmpeg(&[
            "-f",
            "lavfi",
            "-i",
            "testsrc=duration=1:size=64x64:rate=10",
            "-c:v",
            "libx264",
            "-pix_fmt",
            "yuv420p",
            mp4.to_str().unwrap(),
        ]);
        for (out, extra) in [
            ("a.mkv", vec!["-c", "copy"]),
            ("a.ts", vec!["-c", "copy"]),
            ("a.avi", vec!["-c:v", "mpeg4"]),
        ] {
            let mut args = vec!["-i", mp4.to_str().unwrap()];
            args.extend(extra);
            let out = p.join(out);
            args.push(out.to_str().unwrap());
            ffmpeg(&args);
        }
        dir
    })
    .path()
}

fn fence() -> Fence {
    Fence::new(Tools::find("ffmpeg", "ffprobe"), 2, 8)
}

/// An fs source over a fresh dir holding `files` (name, bytes).
fn source(files: &[(&str, Vec<u8>)]) -> (tempfile::TempDir, Arc<AnyBackend>) {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in files {
        std::fs::write(dir.path().join(name), bytes).unwrap();
    }
    let backend = Arc::new(AnyBackend::Fs(FsBackend::new(dir.path()).unwrap()));
    (dir, backend)
}

fn mp4_bytes() -> Vec<u8> {
    std::fs::read(samples().join("a.mp4")).unwrap()
}

/// ffprobe's format name of `opened`'s input (a real child through the fence).
async fn format_name(opened: &Opened) -> Result<String, VideoError> {
    let mut args = opened.args.clone();
    args.extend(["-of", "csv=p=0", "-show_entries", "format=format_name"].map(OsString::from));
    let out = fence()
        .run(Tool::Ffprobe, args, Duration::from_secs(20), 1 << 16)
        .await?;
    Ok(String::from_utf8_lossy(&out)
        .trim()
        .trim_matches('"')
        .to_owned())
}

#[test]
fn sniff_names_each_container_by_its_magic_bytes() {
    let head = |name: &str| std::fs::read(samples().join(name)).unwrap();
    assert_eq!(sniff_bytes(&head("a.mp4")), Some(Container::Mov));
    assert_eq!(sniff_bytes(&head("a.mkv")), Some(Container::Matroska));
    assert_eq!(sniff_bytes(&head("a.avi")), Some(Container::Avi));
    assert_eq!(sniff_bytes(&head("a.ts")), Some(Container::Mpegts));
    // M2TS: a 4-byte timestamp before each 188-byte packet.
    let ts = head("a.ts");
    let m2ts: Vec<u8> = ts
        .chunks(188)
        .flat_map(|packet| [0, 0, 0, 0].into_iter().chain(packet.iter().copied()))
        .collect();
    assert_eq!(sniff_bytes(&m2ts), Some(Container::Mpegts));
    // Not videos, whatever they are called.
    for text in [
        &b"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\nfile:/etc/passwd\n"[..],
        b"ffconcat version 1.0\nfile /etc/passwd\n",
        b"file:/etc/passwd",
        b"",
        b"\x00\x00\x00\x18ft",
        b"GIF89a........",
    ] {
        assert_eq!(
            sniff_bytes(text),
            None,
            "{:?}",
            String::from_utf8_lossy(text)
        );
    }
}

#[test]
fn range_parsing_accepts_open_and_closed_ranges_within_the_object() {
    use super::feed::parse_range;
    assert_eq!(parse_range("bytes=0-", 10), Some((0, 10)));
    assert_eq!(parse_range("bytes=3-5", 10), Some((3, 6)));
    assert_eq!(parse_range("bytes=3-500", 10), Some((3, 10)));
    assert_eq!(parse_range("bytes=10-", 10), None);
    assert_eq!(parse_range("bytes=5-3", 10), None);
    assert_eq!(parse_range("bytes=-5", 10), None);
    assert_eq!(parse_range("items=0-", 10), None);
    assert_eq!(parse_range("bytes=a-", 10), None);
}

#[tokio::test]
async fn sniff_refuses_a_playlist_named_mp4_and_a_container_not_allowed() {
    let playlist = b"#EXTM3U\n#EXTINF:1,\nother.mp4\n#EXT-X-ENDLIST\n".to_vec();
    let (_dir, backend) = source(&[
        ("x.mp4", playlist),
        ("a.mkv", std::fs::read(samples().join("a.mkv")).unwrap()),
    ]);
    let input = Input::of_object(&backend, "x.mp4", object(&backend, "x.mp4").await)
        .await
        .unwrap();
    let err = input.sniff(&[Container::Mov]).await.unwrap_err();
    assert!(
        matches!(&err, VideoError::Unsupported(m) if m == "not a video container we accept"),
        "{err:?}"
    );
    let input = Input::of_object(&backend, "a.mkv", object(&backend, "a.mkv").await)
        .await
        .unwrap();
    let err = input.sniff(&[Container::Mov]).await.unwrap_err();
    assert!(
        matches!(&err, VideoError::Unsupported(m) if m.contains("matroska")),
        "{err:?}"
    );
    assert_eq!(
        input
            .sniff(&[Container::Mov, Container::Matroska])
            .await
            .unwrap(),
        Container::Matroska
    );
}

#[tokio::test]
async fn an_fs_file_is_named_by_its_canonical_path_and_keys_never_become_options() {
    let mp4 = mp4_bytes();
    let keys = [
        "-i",
        "-f",
        "a|b.mp4",
        "concat:x.mp4",
        "file:x.mp4",
        "a:b.mp4",
        "http:x.mp4",
    ];
    let files: Vec<(&str, Vec<u8>)> = keys.iter().map(|k| (*k, mp4.clone())).collect();
    let (dir, backend) = source(&files);
    let root = dir.path().canonicalize().unwrap();
    for key in keys {
        let input = Input::of_object(&backend, key, object(&backend, key).await)
            .await
            .unwrap();
        let Origin::File(path) = input.origin() else {
            panic!("an fs source gives a file");
        };
        assert_eq!(path, &root.join(key));
        let container = input.sniff(&[Container::Mov]).await.unwrap();
        let opened = input.open(container).await.unwrap();
        let mut url = OsString::from("file:");
        url.push(root.join(key));
        assert_eq!(
            opened.args,
            [
                "-protocol_whitelist",
                "file",
                "-format_whitelist",
                "mov",
                "-f",
                "mov",
                "-i"
            ]
            .map(OsString::from)
            .into_iter()
            .chain([url])
            .collect::<Vec<_>>()
        );
        assert!(opened.feed.is_none());
        // ffprobe opens exactly that file.
        assert_eq!(
            format_name(&opened).await.unwrap(),
            "mov,mp4,m4a,3gp,3g2,mj2",
            "{key}"
        );
    }
}

#[tokio::test]
async fn a_symlink_leaving_the_root_is_no_such_object() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("v.mp4"), mp4_bytes()).unwrap();
    let (dir, backend) = source(&[("in.mp4", mp4_bytes())]);
    std::os::unix::fs::symlink(outside.path().join("v.mp4"), dir.path().join("out.mp4")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("in.mp4"), dir.path().join("abs-in.mp4")).unwrap();
    std::os::unix::fs::symlink("in.mp4", dir.path().join("rel-in.mp4")).unwrap();
    let AnyBackend::Fs(fs) = &*backend else {
        unreachable!()
    };
    assert!(matches!(
        fs.local_path("out.mp4").await,
        Err(BackendError::NotFound)
    ));
    assert!(matches!(
        fs.local_path("../x.mp4").await,
        Err(BackendError::NotFound)
    ));
    assert!(matches!(
        fs.local_path("/etc/passwd").await,
        Err(BackendError::NotFound)
    ));
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    assert!(matches!(
        fs.local_path("sub").await,
        Err(BackendError::NotAnObject)
    ));
    // Symlinks inside the root resolve to the file they name.
    let root = dir.path().canonicalize().unwrap();
    for key in ["abs-in.mp4", "rel-in.mp4"] {
        let (path, meta) = fs.local_path(key).await.unwrap();
        assert_eq!(path, root.join("in.mp4"));
        assert_eq!(meta.size, mp4_bytes().len() as u64);
    }
}

#[tokio::test]
async fn a_file_changed_since_the_request_was_planned_is_refused() {
    let (dir, backend) = source(&[("v.mp4", mp4_bytes())]);
    let bytes = object(&backend, "v.mp4").await;
    std::fs::write(dir.path().join("v.mp4"), b"shorter").unwrap();
    let err = Input::of_object(&backend, "v.mp4", bytes)
        .await
        .unwrap_err();
    assert!(
        matches!(&err, VideoError::Source(e) if matches!(**e, BackendError::Changed)),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_file_name_with_a_control_character_is_refused() {
    let (_dir, backend) = source(&[("a\nb.mp4", mp4_bytes())]);
    let err = Input::of_object(&backend, "a\nb.mp4", object(&backend, "a\nb.mp4").await)
        .await
        .unwrap_err();
    assert!(
        matches!(err, VideoError::BadParameter { param: "key", .. }),
        "{err:?}"
    );
}

#[tokio::test]
async fn read_at_reads_a_file_and_an_object_alike() {
    let mp4 = mp4_bytes();
    let (_dir, backend) = source(&[("v.mp4", mp4.clone())]);
    let file = Input::of_object(&backend, "v.mp4", object(&backend, "v.mp4").await)
        .await
        .unwrap();
    let size = mp4.len() as u64;
    let object = Input::new(Origin::Object(object(&backend, "v.mp4").await), size);
    for input in [&file, &object] {
        assert_eq!(input.size(), size);
        assert_eq!(&input.read_at(0, 8).await.unwrap()[..], &mp4[..8]);
        assert_eq!(&input.read_at(100, 50).await.unwrap()[..], &mp4[100..150]);
        assert_eq!(
            &input.read_at(size - 4, 100).await.unwrap()[..],
            &mp4[mp4.len() - 4..]
        );
        assert!(input.read_at(size, 10).await.unwrap().is_empty());
    }
}

/// One raw HTTP/1.1 request to the feed; the status line and headers, and the body.
fn raw_get(url: &str, path: &str, range: Option<&str>) -> (String, Vec<u8>) {
    let authority = url
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap();
    let mut stream = std::net::TcpStream::connect(authority).unwrap();
    let range = range.map_or(String::new(), |r| format!("Range: {r}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\n{range}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    stream.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    (head, all[split + 4..].to_vec())
}

#[tokio::test]
async fn the_loopback_feed_serves_only_its_credential_path_with_ranges() {
    let mp4 = mp4_bytes();
    let (_dir, backend) = source(&[("v.mp4", mp4.clone())]);
    let size = mp4.len() as u64;
    let input = Input::new(Origin::Object(object(&backend, "v.mp4").await), size);
    let opened = input.open(Container::Mov).await.unwrap();
    let url = opened.args.last().unwrap().to_str().unwrap().to_owned();
    assert_eq!(
        opened.args[..9],
        [
            "-recv_buffer_size",
            "65536",
            "-protocol_whitelist",
            "http,tcp",
            "-format_whitelist",
            "mov",
            "-f",
            "mov",
            "-i"
        ]
        .map(OsString::from)
    );
    let credential = url.rsplit('/').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{url}");
    assert_eq!(credential.len(), 32);
    assert!(credential.bytes().all(|b| b.is_ascii_hexdigit()));
    assert!(!url.contains("v.mp4"));

    let path = format!("/{credential}");
    let (url2, path2) = (url.clone(), path.clone());
    let (whole, ranged, open_end, wrong, past) = tokio::task::spawn_blocking(move || {
        (
            raw_get(&url2, &path2, None),
            raw_get(&url2, &path2, Some("bytes=10-19")),
            raw_get(&url2, &path2, Some("bytes=100-")),
            raw_get(&url2, "/v.mp4", None),
            raw_get(&url2, &path2, Some(&format!("bytes={size}-"))),
        )
    })
    .await
    .unwrap();
    assert!(whole.0.starts_with("HTTP/1.1 200"), "{}", whole.0);
    assert_eq!(whole.1, mp4);
    assert!(ranged.0.starts_with("HTTP/1.1 206"), "{}", ranged.0);
    assert!(
        ranged
            .0
            .to_ascii_lowercase()
            .contains(&format!("content-range: bytes 10-19/{size}"))
    );
    assert!(
        ranged
            .0
            .to_ascii_lowercase()
            .contains("accept-ranges: bytes")
    );
    assert_eq!(ranged.1, &mp4[10..20]);
    assert_eq!(open_end.1, &mp4[100..]);
    assert!(wrong.0.starts_with("HTTP/1.1 404"), "{}", wrong.0);
    assert!(past.0.starts_with("HTTP/1.1 416"), "{}", past.0);

    // ffprobe reads the object through it.
    assert_eq!(
        format_name(&opened).await.unwrap(),
        "mov,mp4,m4a,3gp,3g2,mj2"
    );

    // Dropping the opened input closes the feed.
    let authority = url
        .strip_prefix("http://")
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_owned();
    drop(opened);
    let mut closed = false;
    for _ in 0..200 {
        if std::net::TcpStream::connect(&authority).is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(closed, "the feed still accepts connections after the job");
}

#[tokio::test]
async fn the_feed_serves_large_objects_in_pieces_not_whole() {
    // 5 MiB of zeros after a valid MP4 head: a range of 3 MiB is read in pieces of 64, 128,
    // 256, 512 KiB, then 1 MiB twice, and the last 64 KiB.
    let mut big = mp4_bytes();
    big.resize(5 << 20, 0);
    let (_dir, backend) = source(&[("big.mp4", big.clone())]);
    let bytes = object(&backend, "big.mp4").await;
    let input = Input::new(Origin::Object(bytes), big.len() as u64);
    let opened = input.open(Container::Mov).await.unwrap();
    let url = opened.args.last().unwrap().to_str().unwrap().to_owned();
    let path = format!("/{}", url.rsplit('/').next().unwrap());
    let (head, body) =
        tokio::task::spawn_blocking(move || raw_get(&url, &path, Some("bytes=1048576-4194303")))
            .await
            .unwrap();
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(body, &big[1 << 20..4 << 20]);
    let Origin::Object(bytes) = input.origin() else {
        unreachable!()
    };
    assert_eq!(bytes.reads(), 7);
    assert_eq!(bytes.bytes_read(), 3 << 20);
}

#[tokio::test]
async fn a_playlist_or_concat_list_forced_through_the_demuxer_opens_nothing_else() {
    // A listener the disguised files point at: it must receive no connection.
    let bait = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    bait.set_nonblocking(true).unwrap();
    let port = bait.local_addr().unwrap().port();
    let other = samples().join("a.mp4");
    let other = other.to_str().unwrap();
    let files = [
        (
            "hls.mp4",
            format!(
                "#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1,\n{other}\n#EXTINF:1,\nhttp://127.0.0.1:{port}/x.ts\n#EXT-X-ENDLIST\n"
            ),
        ),
        (
            "concat.mp4",
            format!("ffconcat version 1.0\nfile '{other}'\nfile 'http://127.0.0.1:{port}/y.mp4'\n"),
        ),
        ("url.mp4", format!("http://127.0.0.1:{port}/z.mp4")),
    ];
    let files: Vec<(&str, Vec<u8>)> = files
        .iter()
        .map(|(k, v)| (*k, v.clone().into_bytes()))
        .collect();
    let (_dir, backend) = source(&files);
    for (key, _) in &files {
        let input = Input::of_object(&backend, key, object(&backend, key).await)
            .await
            .unwrap();
        assert!(
            input.sniff(&ALL_CONTAINERS).await.is_err(),
            "{key} sniffed as a video"
        );
        // Even forced past the sniff, every allowed demuxer refuses it without opening more.
        for container in ALL_CONTAINERS {
            let opened = input.open(container).await.unwrap();
            let err = format_name(&opened).await.unwrap_err();
            assert!(
                matches!(&err, VideoError::Corrupt(m) if m == "ffprobe failed"),
                "{key}: {err:?}"
            );
        }
        // The same through the loopback feed.
        let fed = Input::new(Origin::Object(object(&backend, key).await), input.size());
        let opened = fed.open(Container::Mov).await.unwrap();
        assert!(format_name(&opened).await.is_err(), "{key}");
    }
    assert!(
        matches!(bait.accept(), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
        "a disguised file made ffprobe connect to another URL"
    );
}

const ALL_CONTAINERS: [Container; 4] = [
    Container::Mov,
    Container::Matroska,
    Container::Avi,
    Container::Mpegts,
];
