//! Interoperability with a Go peer written from the article
//! (`tests/go-peer/main.go`, golang.org/x/net/websocket): the Go client
//! against our server binary, and our client binary against the Go server.
//! Real processes, real sockets on 127.0.0.1.
//!
//! The tests build the peer (GOPATH mode, Debian's
//! `golang-golang-x-net-dev`, as `.ci/run` installs) into Cargo's test
//! temp dir, once. Without `go` or the package they skip, printing why to
//! the stderr handle itself: libtest captures `eprint!`, not that, so the
//! message shows in a plain `cargo test`.

use std::ffi::OsStr;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::process::{replies, start_server, Finished, Proc, RECEIVED};

/// Where GOPATH mode finds the Go WebSocket package (Debian's package).
const GO_WEBSOCKET_PKG: &str = "/usr/share/gocode/src/golang.org/x/net/websocket";

/// Time for the Go peer to start (it is built before it is started).
const GO_START_SECS: u64 = 30;

/// The Go tests run one at a time: the Go server's port is picked by
/// binding and releasing it, and two peers at once make that race likelier.
static GO_PEER_LOCK: Mutex<()> = Mutex::new(());

/// Says on stderr why a test skips, past libtest's capture.
fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED (Go interop): {why}");
}

/// The built Go peer, or `None` (having said why) when the test must skip.
/// Built once per test run; later calls reuse the verdict.
fn go_peer_binary() -> Option<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match BUILT.get_or_init(build_go_peer) {
        Ok(binary) => Some(binary.clone()),
        Err(why) => {
            skip(why);
            None
        }
    }
}

/// `go build` of `tests/go-peer` in GOPATH mode into the test temp dir.
fn build_go_peer() -> Result<PathBuf, String> {
    let go = Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !go.is_ok_and(|status| status.success()) {
        return Err("`go version` failed; Go is not on PATH (apt-get install golang-go)".into());
    }
    if !Path::new(GO_WEBSOCKET_PKG).is_dir() {
        return Err(format!(
            "{GO_WEBSOCKET_PKG} missing (apt-get install golang-golang-x-net-dev)"
        ));
    }
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/go-peer");
    let out = Path::new(env!("CARGO_TARGET_TMPDIR")).join("go-peer");
    let binary = out.join("go-peer");
    let gopath = format!("{}:/usr/share/gocode", out.join("gopath").display());
    let built = Command::new("go")
        .args(["build", "-o"])
        .arg(&binary)
        .arg(".")
        .current_dir(&source)
        .env("GO111MODULE", "off")
        .env("GOPATH", gopath)
        .env("GOCACHE", out.join("cache"))
        .output()
        .map_err(|e| format!("cannot run go build: {e}"))?;
    // A broken peer is a failure, not a skip: Go is there.
    assert!(
        built.status.success(),
        "go build of {} failed:\n{}",
        source.display(),
        String::from_utf8_lossy(&built.stderr)
    );
    Ok(binary)
}

/// Starts the Go peer in `mode` on `addr` (dropping it kills it).
fn go_peer(binary: &Path, mode: &str, addr: &str) -> Proc {
    let args = [
        OsStr::new("-mode"),
        OsStr::new(mode),
        OsStr::new("-address"),
        OsStr::new(addr),
    ];
    Proc::spawn(&format!("go {mode}"), binary.as_os_str(), &args, None)
}

/// Asserts our client exited 0 after the replies to hot dogs 1..=n, in order.
fn assert_hot_dog_replies(run: &Finished, n: u64) {
    assert!(run.status.success(), "our client failed: {run:#?}");
    let replies = replies(&run.stdout);
    assert_eq!(replies.len() as u64, n, "reply count: {run:#?}");
    for (id, reply) in (1..=n).zip(&replies) {
        assert_eq!(reply["requestID"], id, "{reply}");
        assert_eq!(reply["success"], true, "{reply}");
        assert_eq!(
            reply["someOtherThing"],
            format!("Command 'Eject the hot dog {id}.' processed successfully."),
            "{reply}"
        );
    }
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

#[test]
fn go_client_against_our_server() {
    let Some(binary) = go_peer_binary() else {
        return;
    };
    let _serial = GO_PEER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (_server, addr) = start_server("our server", &["server"]);

    let mut go = go_peer(&binary, "client", &addr.to_string());
    go.wait_for_line(GO_START_SECS, "`Starting Client`", |l| {
        l.starts_with("Starting Client")
    });
    // The Go client sends a request every 2 s; its replies print with %+v.
    let deadline = Instant::now() + Duration::from_secs(15);
    for id in 1..=2 {
        let line = loop {
            match go.next_line(deadline) {
                Some(line) if line.starts_with(RECEIVED) => break line,
                Some(_) => continue,
                None => go.fail(&format!("output ended before reply {id}")),
            }
        };
        let expected = [
            format!("RequestID:{id} "),
            format!("Command 'Eject the hot dog {id}.' processed successfully."),
            "Success:true".to_string(),
        ];
        for part in &expected {
            assert!(
                line.contains(part.as_str()),
                "reply {id} lacks {part:?}: {line}"
            );
        }
    }
    drop(go);

    // The Go client vanished without a Close; our server keeps serving.
    let run = Proc::wsloop(
        "our client",
        &[
            "client",
            "--address",
            &addr.to_string(),
            "--count",
            "1",
            "--interval",
            "0.05",
        ],
        None,
    )
    .finish(10);
    assert_hot_dog_replies(&run, 1);
}

#[test]
fn our_client_against_go_server() {
    let Some(binary) = go_peer_binary() else {
        return;
    };
    let _serial = GO_PEER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let addr: SocketAddr = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.local_addr().expect("local addr")
    };

    let mut go = go_peer(&binary, "server", &addr.to_string());
    go.wait_for_line(GO_START_SECS, "`Starting Server`", |l| {
        l.starts_with("Starting Server")
    });
    // It prints before it listens: poll until the port accepts (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        if Instant::now() >= deadline {
            go.fail(&format!("{addr} never accepted a connection"));
        }
        thread::sleep(Duration::from_millis(20));
    }

    let run = Proc::wsloop(
        "our client",
        &[
            "client",
            "--address",
            &addr.to_string(),
            "--count",
            "3",
            "--interval",
            "0.1",
        ],
        None,
    )
    .finish(15);
    assert_hot_dog_replies(&run, 3);
    // The Go server saw a WebSocket client (so our handshake, Origin
    // included, passed its checks).
    go.wait_for_line(5, "`Client Connected`", |l| l == "Client Connected");
}
