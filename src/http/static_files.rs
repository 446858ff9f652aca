//! What is served at `/`: a directory on disk (feature `static-files`,
//! with paths that cannot leave its root, no dotfiles and a content type
//! per extension) or the built-in page from `builtin/`.

use std::io;
#[cfg(feature = "static-files")]
use std::path::{Path, PathBuf};

use futures_lite::io::AsyncWrite;

#[cfg(feature = "static-files")]
use super::request::percent_decode;
use super::request::Request;
#[cfg(feature = "static-files")]
use super::response::write_head;
use super::response::{reason_phrase, send_error, write_response};

/// The page served at `/` when no directory is given: the browser console.
#[cfg(feature = "console")]
pub const BUILTIN_PAGE: &str = include_str!("builtin/index.html");

/// The page served at `/` when no directory is given: without the
/// `console` feature, a short description of the endpoint.
#[cfg(not(feature = "console"))]
pub const BUILTIN_PAGE: &str = include_str!("builtin/minimal.html");

/// Where `/` is served from: a directory on disk (with the
/// `static-files` feature), or the built-in page.
#[derive(Debug, Clone)]
pub struct StaticFiles {
    /// The canonical directory files are served from; `None` serves only
    /// the built-in page.
    #[cfg(feature = "static-files")]
    root: Option<PathBuf>,
}

impl StaticFiles {
    /// Serves files under `dir`, which is canonicalized here so that every
    /// later containment check compares canonical paths.
    #[cfg(feature = "static-files")]
    pub fn from_dir(dir: &Path) -> io::Result<Self> {
        let root = std::fs::canonicalize(dir)?;
        if !root.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is not a directory", dir.display()),
            ));
        }
        Ok(StaticFiles { root: Some(root) })
    }

    /// Serves only the built-in page, at `/` and `/index.html`.
    pub fn builtin() -> Self {
        StaticFiles {
            #[cfg(feature = "static-files")]
            root: None,
        }
    }

    /// Answers one `GET` or `HEAD` request and returns the status it sent.
    ///
    /// The caller has already refused other methods and handled upgrades.
    pub async fn serve<W: AsyncWrite + Unpin>(&self, req: &Request, w: &mut W) -> io::Result<u16> {
        let head_only = req.method.eq_ignore_ascii_case("HEAD");
        let path = req.path();
        // Only origin-form targets name a file; `*` and absolute URLs do
        // not. (Both errors share one `send_error` below: one await point.)
        let (status, why) = if path.starts_with('/') {
            #[cfg(feature = "static-files")]
            if let Some(root) = &self.root {
                return dir::serve(root, path, req.query(), w, head_only).await;
            }
            if path == "/" || path == "/index.html" {
                return serve_builtin(w, head_only).await;
            }
            (404, reason_phrase(404))
        } else {
            (400, "bad request target")
        };
        send_error(w, status, why, head_only).await?;
        Ok(status)
    }
}

/// Answers a request for the built-in page (when no directory is served).
async fn serve_builtin<W: AsyncWrite + Unpin>(w: &mut W, head_only: bool) -> io::Result<u16> {
    let headers = [
        ("Content-Type", "text/html; charset=utf-8"),
        ("X-Content-Type-Options", "nosniff"),
    ];
    write_response(w, 200, &headers, BUILTIN_PAGE.as_bytes(), head_only).await?;
    Ok(200)
}

#[cfg(feature = "static-files")]
pub use dir::content_type;

/// Serving a directory (`--www`): paths that cannot leave the root,
/// content types, streaming. Only with the `static-files` feature.
#[cfg(feature = "static-files")]
mod dir {
    use std::io;
    use std::path::{Path, PathBuf};

    use futures_lite::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};

    use super::{percent_decode, reason_phrase, send_error, write_head, write_response};

    /// Bytes of a file read ahead of the socket per response. `Unblock`'s
    /// default pipe is 8 MiB, which a peer that stops reading holds for as
    /// long as it stays connected; 32 KiB still fills a socket buffer in
    /// a few reads.
    const FILE_PIPE_CAPACITY: usize = 32 * 1024;

    /// Content types by file extension (compared case-insensitively). Text types
    /// name their charset so browsers need not guess.
    const CONTENT_TYPES: &[(&str, &str)] = &[
        ("html", "text/html; charset=utf-8"),
        ("htm", "text/html; charset=utf-8"),
        ("css", "text/css; charset=utf-8"),
        ("js", "text/javascript; charset=utf-8"),
        ("mjs", "text/javascript; charset=utf-8"),
        ("json", "application/json; charset=utf-8"),
        ("map", "application/json; charset=utf-8"),
        ("txt", "text/plain; charset=utf-8"),
        ("svg", "image/svg+xml; charset=utf-8"),
        ("xml", "application/xml; charset=utf-8"),
        ("png", "image/png"),
        ("jpg", "image/jpeg"),
        ("jpeg", "image/jpeg"),
        ("gif", "image/gif"),
        ("ico", "image/x-icon"),
        ("webp", "image/webp"),
        ("wasm", "application/wasm"),
        ("pdf", "application/pdf"),
        ("woff", "font/woff"),
        ("woff2", "font/woff2"),
    ];

    /// Content type for anything not in [`CONTENT_TYPES`]: browsers download it
    /// instead of trying to render it.
    pub(super) const DEFAULT_CONTENT_TYPE: &str = "application/octet-stream";

    /// The file served for a request that names a directory.
    const INDEX_FILE: &str = "index.html";

    /// Content-Type for a file name by its extension;
    /// `application/octet-stream` when the extension is unknown.
    pub fn content_type(path: &Path) -> &'static str {
        let Some(ext) = path.extension().and_then(|ext| ext.to_str()) else {
            return DEFAULT_CONTENT_TYPE;
        };
        CONTENT_TYPES
            .iter()
            .find(|(known, _)| known.eq_ignore_ascii_case(ext))
            .map_or(DEFAULT_CONTENT_TYPE, |(_, ty)| ty)
    }

    /// What a request path resolved to inside the root.
    #[derive(Debug)]
    enum Resolved {
        /// A regular file inside the root, opened, with its length and the
        /// content type its name implies.
        File(std::fs::File, u64, &'static str),
        /// A directory named without its trailing slash; send the client here.
        Redirect(String),
        /// Nothing to serve; answer with this status.
        Status(u16),
    }

    /// Answers a `GET` or `HEAD` for `path` (with `query`, kept on a
    /// redirect) from under the canonical `root`.
    pub(super) async fn serve<W: AsyncWrite + Unpin>(
        root: &Path,
        path: &str,
        query: Option<&str>,
        w: &mut W,
        head_only: bool,
    ) -> io::Result<u16> {
        // The file system is blocking: resolve and open on smol's blocking
        // pool, in one hop rather than one per system call.
        let (root, raw_path) = (root.to_path_buf(), path.to_string());
        let query = query.map(str::to_string);
        match blocking::unblock(move || resolve(&root, &raw_path, query.as_deref())).await {
            Resolved::File(file, len, content_type) => {
                serve_file(file, len, content_type, w, head_only).await
            }
            Resolved::Redirect(location) => {
                let headers = [("Location", location.as_str())];
                write_response(w, 301, &headers, b"", head_only).await?;
                Ok(301)
            }
            Resolved::Status(status) => {
                send_error(w, status, reason_phrase(status), head_only).await?;
                Ok(status)
            }
        }
    }

    /// Streams the opened regular `file` of `len` bytes without reading it
    /// whole into memory.
    async fn serve_file<W: AsyncWrite + Unpin>(
        file: std::fs::File,
        len: u64,
        content_type: &str,
        w: &mut W,
        head_only: bool,
    ) -> io::Result<u16> {
        let headers = [
            ("Content-Type", content_type),
            ("X-Content-Type-Options", "nosniff"),
        ];
        write_head(w, 200, &headers, len).await?;
        if !head_only {
            // `take` keeps the body to the promised length if the file grows.
            let file = blocking::Unblock::with_capacity(FILE_PIPE_CAPACITY, file);
            futures_lite::io::copy(file.take(len), &mut *w).await?;
        }
        w.flush().await?;
        Ok(200)
    }

    /// Resolves a raw request path (starting with `/`) to what should be served
    /// from under the canonical `root`, opening the file. Blocking.
    fn resolve(root: &Path, raw_path: &str, query: Option<&str>) -> Resolved {
        let segments = match path_segments(raw_path) {
            Ok(segments) => segments,
            Err(status) => return Resolved::Status(status),
        };
        let mut joined = root.to_path_buf();
        joined.extend(&segments);
        let target = match contained(root, &joined) {
            Ok(target) => target,
            Err(status) => return Resolved::Status(status),
        };
        if target.is_dir() {
            if !raw_path.ends_with('/') {
                // One leading slash only: `//host/` would send the browser
                // elsewhere. The query goes along: `/app?room=1` is still
                // meant for the page at `/app/`.
                let path = raw_path.trim_start_matches('/');
                let location = match query {
                    Some(query) => format!("/{path}/?{query}"),
                    None => format!("/{path}/"),
                };
                return Resolved::Redirect(location);
            }
            // The index may itself be a symlink, so it is checked like any target.
            return match contained(root, &target.join(INDEX_FILE)) {
                Ok(index) => open_regular(&index),
                Err(status) => Resolved::Status(status),
            };
        }
        if raw_path.ends_with('/') {
            // `/file.txt/` names a directory that does not exist.
            return Resolved::Status(404);
        }
        open_regular(&target)
    }

    /// Opens `path` if it is a regular file: fifos and devices would block or
    /// never end. The type is checked before `open`, which blocks on a fifo
    /// with no writer (parking a blocking-pool thread for good), and again
    /// on the open file, whose type and length then match what is sent even
    /// if the path changed in between.
    fn open_regular(path: &Path) -> Resolved {
        match std::fs::metadata(path) {
            Ok(meta) if meta.is_file() => {}
            Ok(_) => {
                debug!("{} is not a regular file", path.display());
                return Resolved::Status(404);
            }
            Err(err) => {
                debug!("inspecting {}: {err}", path.display());
                return Resolved::Status(404);
            }
        }
        let opened = std::fs::File::open(path).and_then(|file| Ok((file.metadata()?, file)));
        match opened {
            Ok((meta, file)) if meta.is_file() => {
                Resolved::File(file, meta.len(), content_type(path))
            }
            Ok(_) => Resolved::Status(404),
            Err(err) => {
                debug!("opening {}: {err}", path.display());
                Resolved::Status(404)
            }
        }
    }

    /// Canonicalizes `path` and checks it is still inside `root`: 404 when it
    /// does not exist or a symlink leads to a dotfile, 403 when a symlink
    /// leads out of the root.
    fn contained(root: &Path, path: &Path) -> Result<PathBuf, u16> {
        let canonical = match std::fs::canonicalize(path) {
            Ok(canonical) => canonical,
            Err(err) => {
                debug!("resolving {}: {err}", path.display());
                return Err(404);
            }
        };
        let Ok(inside) = canonical.strip_prefix(root) else {
            debug!("{} leads outside the root", path.display());
            return Err(403);
        };
        // A link named `docs` to `.git` must not serve what `/.git/` does not.
        if inside
            .iter()
            .enumerate()
            .any(|(depth, name)| is_hidden(name) && !is_well_known(depth, name))
        {
            debug!("{} leads to a dotfile", path.display());
            return Err(404);
        }
        Ok(canonical)
    }

    /// Splits a raw request path into the decoded file-name segments to join
    /// onto the root, or the status to refuse it with.
    ///
    /// The path is percent-decoded exactly once, before splitting, so an
    /// encoded `..` or `/` is judged like a literal one, while a double-encoded
    /// `%252e` stays the literal name `%2e`.
    fn path_segments(raw_path: &str) -> Result<Vec<String>, u16> {
        let decoded = percent_decode(raw_path).ok_or(400u16)?;
        let decoded = String::from_utf8(decoded).map_err(|_| 400u16)?;
        // No file name contains NUL, and the OS would cut the path at it.
        if decoded.contains('\0') {
            return Err(400);
        }
        let mut segments = Vec::new();
        for segment in decoded.split('/') {
            // Empty and `.` segments name the same directory.
            if segment.is_empty() || segment == "." {
                continue;
            }
            // `..` climbs out; a backslash is a separator on some systems.
            if segment == ".." || segment.contains('\\') {
                return Err(403);
            }
            // Dotfiles and dot-directories (`.git`, `.env`) are answered as
            // absent: a served checkout keeps its history and secrets.
            if is_hidden(segment.as_ref()) && !is_well_known(segments.len(), segment.as_ref()) {
                return Err(404);
            }
            segments.push(segment.to_string());
        }
        Ok(segments)
    }

    /// Whether a file name is a dotfile's (`.git`, `.env`), never served.
    fn is_hidden(name: &std::ffi::OsStr) -> bool {
        name.as_encoded_bytes().starts_with(b".")
    }

    /// The one dot-directory served: `/.well-known/` at the top (RFC 8615),
    /// where certbot's `--webroot` and other ACME clients put the http-01
    /// challenge that renews the certificate `--cert` reloads. Dotfiles
    /// inside it are still hidden.
    fn is_well_known(depth: usize, name: &std::ffi::OsStr) -> bool {
        depth == 0 && name == WELL_KNOWN
    }

    /// See [`is_well_known`].
    const WELL_KNOWN: &str = ".well-known";
}

#[cfg(test)]
mod tests {
    use super::*;
    #[cfg(feature = "static-files")]
    use dir::{content_type, DEFAULT_CONTENT_TYPE};

    #[cfg(feature = "static-files")]
    use std::path::{Path, PathBuf};
    #[cfg(feature = "static-files")]
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[cfg(feature = "static-files")]
    /// A directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    #[cfg(feature = "static-files")]
    impl TempDir {
        fn new() -> TempDir {
            static COUNTER: AtomicUsize = AtomicUsize::new(0);
            let n = COUNTER.fetch_add(1, Ordering::Relaxed);
            let name = format!("wsloop-http-test-{}-{}", std::process::id(), n);
            let path = std::env::temp_dir().join(name);
            std::fs::create_dir_all(&path).unwrap();
            TempDir(path)
        }
    }

    #[cfg(feature = "static-files")]
    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A response split into status, headers and body.
    struct Response {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    }

    impl Response {
        fn parse(raw: &[u8]) -> Response {
            let mut headers = [httparse::EMPTY_HEADER; 16];
            let mut parsed = httparse::Response::new(&mut headers);
            let httparse::Status::Complete(len) = parsed.parse(raw).unwrap() else {
                panic!("incomplete response");
            };
            Response {
                status: parsed.code.unwrap(),
                headers: parsed
                    .headers
                    .iter()
                    .map(|h| {
                        let value = String::from_utf8(h.value.to_vec()).unwrap();
                        (h.name.to_string(), value)
                    })
                    .collect(),
                body: raw[len..].to_vec(),
            }
        }

        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_str())
        }
    }

    fn request(method: &str, target: &str) -> Request {
        Request {
            method: method.to_string(),
            target: target.to_string(),
            headers: Vec::new(),
        }
    }

    fn serve(files: &StaticFiles, method: &str, target: &str) -> Response {
        let mut out = Vec::new();
        let status = smol::block_on(files.serve(&request(method, target), &mut out)).unwrap();
        let response = Response::parse(&out);
        assert_eq!(
            status, response.status,
            "returned status matches the sent one"
        );
        response
    }

    #[cfg(feature = "static-files")]
    /// A root with `hello.txt`, `style.css`, `dir/index.html`, `empty/`.
    fn sample_root() -> TempDir {
        let tmp = TempDir::new();
        let root = tmp.0.join("root");
        std::fs::create_dir_all(root.join("dir")).unwrap();
        std::fs::create_dir_all(root.join("empty")).unwrap();
        std::fs::write(root.join("hello.txt"), "hello world").unwrap();
        std::fs::write(root.join("style.css"), "body{}").unwrap();
        std::fs::write(root.join("dir").join("index.html"), "<p>dir</p>").unwrap();
        std::fs::write(tmp.0.join("secret.txt"), "secret").unwrap();
        tmp
    }

    #[cfg(feature = "static-files")]
    fn files_of(tmp: &TempDir) -> StaticFiles {
        StaticFiles::from_dir(&tmp.0.join("root")).unwrap()
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn content_types() {
        assert_eq!(
            content_type(Path::new("a.HTML")),
            "text/html; charset=utf-8"
        );
        assert_eq!(content_type(Path::new("a.woff2")), "font/woff2");
        assert_eq!(content_type(Path::new("a.png")), "image/png");
        assert_eq!(content_type(Path::new("noext")), DEFAULT_CONTENT_TYPE);
        assert_eq!(content_type(Path::new("a.exe")), DEFAULT_CONTENT_TYPE);
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn serves_file_with_type() {
        let tmp = sample_root();
        let files = files_of(&tmp);
        let resp = serve(&files, "GET", "/hello.txt?cache=1");
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type"),
            Some("text/plain; charset=utf-8")
        );
        assert_eq!(resp.header("x-content-type-options"), Some("nosniff"));
        assert_eq!(resp.header("content-length"), Some("11"));
        assert_eq!(resp.body, b"hello world");

        let resp = serve(&files, "GET", "/style%2ecss");
        assert_eq!(resp.header("content-type"), Some("text/css; charset=utf-8"));
        assert_eq!(resp.body, b"body{}");
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn head_has_length_but_no_body() {
        let tmp = sample_root();
        let resp = serve(&files_of(&tmp), "HEAD", "/hello.txt");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.header("content-length"), Some("11"));
        assert!(resp.body.is_empty());
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn directory_index_and_redirect() {
        let tmp = sample_root();
        let files = files_of(&tmp);
        let resp = serve(&files, "GET", "/dir/");
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert_eq!(resp.body, b"<p>dir</p>");

        let resp = serve(&files, "GET", "/dir");
        assert_eq!(resp.status, 301);
        assert_eq!(resp.header("location"), Some("/dir/"));

        // No open redirect to another host through a leading `//`.
        let resp = serve(&files, "GET", "//dir");
        assert_eq!(resp.header("location"), Some("/dir/"));

        // No listing for a directory without an index.
        assert_eq!(serve(&files, "GET", "/empty/").status, 404);
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn missing_is_404() {
        let tmp = sample_root();
        let files = files_of(&tmp);
        assert_eq!(serve(&files, "GET", "/nope.txt").status, 404);
        assert_eq!(serve(&files, "GET", "/hello.txt/x").status, 404);
        assert_eq!(serve(&files, "GET", "/hello.txt/").status, 404);
        // Decoded once only: the literal name `%2e%2e` simply is not there.
        assert_eq!(serve(&files, "GET", "/%252e%252e/x").status, 404);
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn traversal_is_403() {
        let tmp = sample_root();
        let files = files_of(&tmp);
        for target in [
            "/../etc/passwd",
            "/%2e%2e/etc/passwd",
            "/a/%2E%2E/%2e%2e/x",
            "/..%2fsecret.txt",
            "/a%5c..%5csecret.txt",
        ] {
            assert_eq!(serve(&files, "GET", target).status, 403, "{target}");
        }
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn bad_targets_are_400() {
        let tmp = sample_root();
        let files = files_of(&tmp);
        for target in ["/%zz", "/%", "/a%00b", "/%ff", "*", "http://x/hello.txt"] {
            assert_eq!(serve(&files, "GET", target).status, 400, "{target}");
        }
    }

    #[cfg(feature = "static-files")]
    #[cfg(unix)]
    #[test]
    fn symlink_outside_root_is_403() {
        let tmp = sample_root();
        let root = tmp.0.join("root");
        std::os::unix::fs::symlink(tmp.0.join("secret.txt"), root.join("link.txt")).unwrap();
        std::os::unix::fs::symlink(&tmp.0, root.join("up")).unwrap();
        std::os::unix::fs::symlink(root.join("hello.txt"), root.join("inside.txt")).unwrap();
        let files = files_of(&tmp);
        assert_eq!(serve(&files, "GET", "/link.txt").status, 403);
        assert_eq!(serve(&files, "GET", "/up/secret.txt").status, 403);
        let resp = serve(&files, "GET", "/inside.txt");
        assert_eq!(resp.status, 200);
        assert_eq!(resp.body, b"hello world");
    }

    #[cfg(feature = "static-files")]
    #[test]
    fn from_dir_rejects_files() {
        let tmp = sample_root();
        assert!(StaticFiles::from_dir(&tmp.0.join("secret.txt")).is_err());
        assert!(StaticFiles::from_dir(&tmp.0.join("missing")).is_err());
    }

    #[test]
    fn builtin_page() {
        let files = StaticFiles::builtin();
        let resp = serve(&files, "GET", "/");
        assert_eq!(resp.status, 200);
        assert_eq!(
            resp.header("content-type"),
            Some("text/html; charset=utf-8")
        );
        assert!(String::from_utf8(resp.body).unwrap().contains("wsloop"));
        assert_eq!(serve(&files, "GET", "/index.html").status, 200);
        assert_eq!(serve(&files, "GET", "/favicon.ico").status, 404);
        assert_eq!(serve(&files, "GET", "/x").status, 404);
        // A guard against accidental growth: the console with its
        // Devices panel is 15 KB (the panel alone 5 KB).
        assert!(BUILTIN_PAGE.len() < 16 * 1024, "{} B", BUILTIN_PAGE.len());
    }
}
