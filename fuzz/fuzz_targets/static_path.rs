//! Fuzz target: static file resolution on arbitrary request targets.
//!
//! A www root with a few files, a subdirectory with an index, and symlinks
//! leading out of it (to a file and to directories) is made once. Each
//! input (lossy UTF-8) is served as a GET target as is, behind `/`, and
//! under a subdirectory. It must never panic, never send a byte of the
//! file outside the root, answer only 200/301/400/403/404, and a 200 must
//! carry exactly one of the files inside the root.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use wsloop::http::{Request, StaticFiles};

/// In the file outside the root; must never appear in a response.
const MARKER: &str = "OUTSIDE-THE-ROOT-7f3a9c1e";

/// Bodies of the regular files inside the root.
const INSIDE: &[(&str, &str)] = &[
    ("hello.txt", "hello world"),
    ("style.css", "body{}"),
    ("a b.html", "<p>space</p>"),
    ("%41.txt", "literal percent"),
    ("dir/index.html", "<p>dir</p>"),
    ("dir/sub/deep.json", "{\"deep\":true}"),
];

fn files() -> &'static StaticFiles {
    static FILES: OnceLock<StaticFiles> = OnceLock::new();
    FILES.get_or_init(|| {
        let base: PathBuf =
            std::env::temp_dir().join(format!("wsloop-fuzz-static-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let root = base.join("www");
        std::fs::create_dir_all(root.join("dir/sub")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        for (name, body) in INSIDE {
            std::fs::write(root.join(name), body).unwrap();
        }
        std::fs::write(base.join("secret.txt"), MARKER).unwrap();
        std::fs::create_dir_all(base.join("outdir")).unwrap();
        std::fs::write(base.join("outdir/index.html"), MARKER).unwrap();
        std::os::unix::fs::symlink(base.join("secret.txt"), root.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(&base, root.join("up")).unwrap();
        std::os::unix::fs::symlink(base.join("outdir"), root.join("outdir")).unwrap();
        std::os::unix::fs::symlink("../../secret.txt", root.join("dir/rel.txt")).unwrap();
        std::os::unix::fs::symlink(root.join("hello.txt"), root.join("inside.txt")).unwrap();
        StaticFiles::from_dir(&root).unwrap()
    })
}

/// Status and body of a raw response.
fn split(raw: &[u8]) -> (u16, &[u8], &str) {
    let text_end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("response without a complete head");
    let head = std::str::from_utf8(&raw[..text_end]).expect("head is not UTF-8");
    let status: u16 = head
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|code| code.parse().ok())
        .expect("no status line");
    (status, &raw[text_end + 4..], head)
}

fn serve(method: &str, target: String) {
    let req = Request {
        method: method.to_string(),
        target,
        headers: Vec::new(),
    };
    let mut out = Vec::new();
    let status = smol::block_on(files().serve(&req, &mut out))
        .unwrap_or_else(|err| panic!("serve failed on {:?}: {err}", req.target));
    assert!(
        matches!(status, 200 | 301 | 400 | 403 | 404),
        "status {status} for {:?}",
        req.target
    );
    assert!(
        !out.windows(MARKER.len()).any(|w| w == MARKER.as_bytes()),
        "outside file served for {:?}",
        req.target
    );
    let (sent, body, head) = split(&out);
    assert_eq!(sent, status, "returned status differs from the sent one");
    match status {
        200 if method == "GET" => assert!(
            INSIDE.iter().any(|(_, b)| b.as_bytes() == body),
            "200 with an unknown body for {:?}",
            req.target
        ),
        301 => {
            let location = head
                .lines()
                .find_map(|l| l.strip_prefix("Location: "))
                .expect("301 without Location");
            assert!(location.starts_with('/') && !location.starts_with("//"));
            assert!(location.ends_with('/'));
        }
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let method = if data.first().is_some_and(|b| b & 0x80 != 0) {
        "HEAD"
    } else {
        "GET"
    };
    serve(method, text.to_string());
    serve(method, format!("/{text}"));
    serve(method, format!("/dir/{text}"));
});
