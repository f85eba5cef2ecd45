//! The fs source's own file-system rules, end to end: symlinks are followed only while they stay
//! inside the root, special files are not objects (and never block the gateway), and bodies of
//! many frames come out byte-exact whether the page cache holds the file or not.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use crate::support;

use std::os::unix::fs::symlink;
use std::path::Path;

use crate::support::{Proto, TestGateway, pattern_bytes, write_file};
use http::StatusCode;

const SRC: &str = "data";

/// GET (or HEAD) `key` from the source over `proto`; status and body.
async fn fetch(
    gw: &TestGateway,
    proto: Proto,
    method: http::Method,
    key: &str,
    range: Option<&str>,
) -> (StatusCode, bytes::Bytes) {
    let url = gw.url(&format!("/o/{SRC}/{}", support::encode_key(key)));
    let mut req = gw.client_for(proto).request(method.clone(), url);
    if let Some(range) = range {
        req = req.header("range", range);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{proto:?} {method} {key}: {e}"));
    assert_eq!(
        resp.version(),
        proto.version(),
        "{key}: negotiated protocol"
    );
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{proto:?} {method} {key}: body: {e}"));
    (status, body)
}

#[tokio::test]
async fn symlinks_are_followed_inside_the_root_and_are_404_when_they_lead_out() {
    let (gw, root) = support::GatewayBuilder::new().start_fs(SRC).await;
    let outside = tempfile::tempdir().unwrap();
    let secret = b"outside the root: must never be served";
    write_file(outside.path(), "secret.txt", secret);
    let inside = pattern_bytes(5000, 7);
    let target = write_file(root.path(), "real/a.bin", &inside);
    let r = root.path();

    symlink("real/a.bin", r.join("rel-in")).unwrap();
    // Absolute symlinks leave the kernel's beneath-the-root resolution; checked by path instead.
    symlink(&target, r.join("abs-in")).unwrap();
    symlink("real", r.join("dir-in")).unwrap();
    symlink(r.join("real"), r.join("abs-dir-in")).unwrap();
    let rel_out = Path::new("..")
        .join(outside.path().file_name().unwrap())
        .join("secret.txt");
    symlink(&rel_out, r.join("rel-out")).unwrap();
    symlink(outside.path().join("secret.txt"), r.join("abs-out")).unwrap();
    symlink(outside.path(), r.join("dir-out")).unwrap();
    symlink("real/../../", r.join("dots-out")).unwrap();
    symlink("/proc/self/root/etc/hostname", r.join("magic-out")).unwrap();
    symlink("loop", r.join("loop")).unwrap();

    for proto in Proto::BOTH {
        for key in ["rel-in", "abs-in", "dir-in/a.bin", "abs-dir-in/a.bin"] {
            let (status, body) = fetch(&gw, proto, http::Method::GET, key, None).await;
            assert_eq!(status, StatusCode::OK, "{proto:?} {key}");
            assert!(
                body == inside,
                "{proto:?} {key}: body differs from the target"
            );
        }
        let out = [
            "rel-out".to_string(),
            "abs-out".to_string(),
            "dir-out/secret.txt".to_string(),
            format!(
                "dots-out/{}/secret.txt",
                outside.path().file_name().unwrap().to_str().unwrap()
            ),
            "magic-out".to_string(),
            "loop".to_string(),
        ];
        for key in &out {
            for method in [http::Method::GET, http::Method::HEAD] {
                let (status, body) = fetch(&gw, proto, method.clone(), key, None).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{proto:?} {method} {key}");
                assert!(
                    !body.windows(secret.len()).any(|w| w == secret),
                    "{proto:?} {key}: served a file outside the root"
                );
            }
        }
    }
}

/// On drop (the test's end, or its panic), open the FIFO's write end without blocking: a reader
/// stuck opening it (the regression this test is about) is then released, so a failing test
/// ends instead of hanging while its runtime waits for that thread.
struct UnblockFifo(std::path::PathBuf);

impl Drop for UnblockFifo {
    fn drop(&mut self) {
        let _ = rustix::fs::open(
            &self.0,
            rustix::fs::OFlags::WRONLY | rustix::fs::OFlags::NONBLOCK | rustix::fs::OFlags::CLOEXEC,
            rustix::fs::Mode::empty(),
        );
    }
}

// Two workers: should an open ever block a worker thread, the client's timeout still fires on
// the other one and the test fails instead of hanging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fifo_or_a_directory_is_not_an_object_and_does_not_block_the_gateway() {
    let (gw, root) = support::GatewayBuilder::new().start_fs(SRC).await;
    write_file(root.path(), "dir/file.txt", b"x");
    // Opening a FIFO for reading waits for a writer, unless the open is non-blocking.
    rustix::fs::mknodat(
        rustix::fs::CWD,
        root.path().join("pipe"),
        rustix::fs::FileType::Fifo,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
        0,
    )
    .unwrap();
    let _unblock = UnblockFifo(root.path().join("pipe"));
    // An absolute symlink is opened by path (the kernel's beneath-the-root resolution refuses it):
    // the same rule there.
    symlink(root.path().join("pipe"), root.path().join("abs-pipe")).unwrap();
    for proto in Proto::BOTH {
        for key in ["pipe", "abs-pipe", "dir"] {
            for method in [http::Method::GET, http::Method::HEAD] {
                let (status, _) = fetch(&gw, proto, method.clone(), key, None).await;
                assert_eq!(status, StatusCode::NOT_FOUND, "{proto:?} {method} {key}");
            }
        }
        let (status, body) = fetch(&gw, proto, http::Method::GET, "dir/file.txt", None).await;
        assert_eq!(
            (status, &body[..]),
            (StatusCode::OK, &b"x"[..]),
            "{proto:?}"
        );
    }
}

/// Drop the file's pages from the page cache, so the next read must go to the disk (where the
/// file system keeps clean pages; on tmpfs this is a no-op and both rounds read from memory).
fn evict_from_page_cache(path: &Path) {
    let file = std::fs::File::open(path).unwrap();
    file.sync_all().unwrap();
    rustix::fs::fadvise(&file, 0, None, rustix::fs::Advice::DontNeed).unwrap();
}

#[tokio::test]
async fn bodies_of_many_frames_are_byte_exact_from_a_warm_and_a_cold_page_cache() {
    let (gw, root) = support::GatewayBuilder::new().start_fs(SRC).await;
    // Not a multiple of the 64 KiB frame; ranges start and end inside frames.
    let len = 3 * 1024 * 1024 + 17;
    let data = pattern_bytes(len, 11);
    let path = write_file(root.path(), "big/object.bin", &data);
    let small = pattern_bytes(40_000, 12);
    let small_path = write_file(root.path(), "big/small.bin", &small);
    let ranges: [(Option<&str>, usize, usize); 4] = [
        (None, 0, len - 1),
        (Some("bytes=65530-200000"), 65530, 200_000),
        (Some("bytes=-70000"), len - 70000, len - 1),
        (Some("bytes=3000000-"), 3_000_000, len - 1),
    ];
    for round in ["cold", "warm"] {
        for proto in Proto::BOTH {
            for (range, start, end) in ranges {
                if round == "cold" {
                    evict_from_page_cache(&path);
                }
                let (status, body) =
                    fetch(&gw, proto, http::Method::GET, "big/object.bin", range).await;
                let want = if range.is_some() {
                    StatusCode::PARTIAL_CONTENT
                } else {
                    StatusCode::OK
                };
                assert_eq!(status, want, "{round} {proto:?} {range:?}");
                assert_eq!(body.len(), end - start + 1, "{round} {proto:?} {range:?}");
                assert!(
                    body[..] == data[start..=end],
                    "{round} {proto:?} {range:?}: bytes differ"
                );
            }
            if round == "cold" {
                evict_from_page_cache(&small_path);
            }
            let (status, body) = fetch(&gw, proto, http::Method::GET, "big/small.bin", None).await;
            assert_eq!(status, StatusCode::OK, "{round} {proto:?} small");
            assert!(body == small, "{round} {proto:?} small: bytes differ");
        }
    }
}
