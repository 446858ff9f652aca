//! Scratch directories for tests that write files (`--www` roots, device
//! scripts, logs).

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::thread;

/// A fresh directory of the test's own under Cargo's test temp dir,
/// removed when dropped, but kept when the test fails, for a look.
pub struct TempDir(PathBuf);

impl TempDir {
    /// Creates `<CARGO_TARGET_TMPDIR>/<tag>-<pid>-<n>`, emptied first: `n`
    /// counts within the process, so two tests using one tag do not meet.
    pub fn new(tag: &str) -> TempDir {
        static COUNTER: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        TempDir(dir)
    }

    /// The path as a command-line argument.
    pub fn arg(&self) -> &str {
        self.0.to_str().expect("temp dir path is UTF-8")
    }
}

impl Deref for TempDir {
    type Target = Path;
    fn deref(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !thread::panicking() {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Writes an executable `/bin/sh` script `body` to `dir/name`; returns its
/// path as a command-line argument.
pub fn script(dir: &Path, name: &str, body: &str) -> String {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).expect("write the script");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    path.to_str().expect("a UTF-8 path").to_string()
}

/// The lines of `path`, none while it does not exist (a file a test's
/// program appends to, read between runs).
pub fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}
