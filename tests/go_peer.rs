//! Interoperability with the original Go program (`../shared/seed/go`), run
//! through `go-peer.sh`: the Go client against our server binary, and our
//! client binary against the Go server. Real processes, real sockets on
//! 127.0.0.1.
//!
//! The tests skip (pass, saying why on stderr) unless `go` is on PATH, the
//! Go WebSocket package is installed and the script exists; the script would
//! otherwise install Go with apt, which is far too slow for a test. Set
//! `WSLOOP_GO_PEER` to use another copy of the script.

use std::ffi::OsStr;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::process::{replies, start_server, Finished, Proc, RECEIVED};

/// Where `go-peer.sh` finds the Go WebSocket package (Debian's package).
const GO_WEBSOCKET_PKG: &str = "/usr/share/gocode/src/golang.org/x/net/websocket";

/// Time for the Go peer to start, including a first `go build`.
const GO_START_SECS: u64 = 120;

/// The Go tests run one at a time: the script builds its binary into one
/// shared path on first use, and two concurrent builds would race.
static GO_PEER_LOCK: Mutex<()> = Mutex::new(());

/// The Go peer script, or `None` (having said why) when the test must skip.
fn go_peer_script() -> Option<PathBuf> {
    let script = std::env::var_os("WSLOOP_GO_PEER")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/seed/go-peer.sh"));
    if !script.is_file() {
        eprintln!(
            "skipping: Go reference peer script {} not found (set WSLOOP_GO_PEER)",
            script.display()
        );
        return None;
    }
    let go = Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !go.is_ok_and(|status| status.success()) {
        eprintln!("skipping: `go version` failed; Go is not on PATH");
        return None;
    }
    if !Path::new(GO_WEBSOCKET_PKG).is_dir() {
        eprintln!("skipping: {GO_WEBSOCKET_PKG} missing (Debian's golang-golang-x-net-dev)");
        return None;
    }
    Some(script)
}

/// Starts `go-peer.sh MODE ADDR` (through bash; the script `exec`s the
/// Go binary, so this pid is the Go program's and dropping kills it).
fn go_peer(script: &Path, mode: &str, addr: &str) -> Proc {
    let args = [script.as_os_str(), OsStr::new(mode), OsStr::new(addr)];
    Proc::spawn(&format!("go {mode}"), OsStr::new("bash"), &args, None)
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
    let Some(script) = go_peer_script() else {
        return;
    };
    let _serial = GO_PEER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let (_server, addr) = start_server("our server", &["server"]);

    let mut go = go_peer(&script, "client", &addr.to_string());
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
    let Some(script) = go_peer_script() else {
        return;
    };
    let _serial = GO_PEER_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let addr: SocketAddr = {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
        listener.local_addr().expect("local addr")
    };

    let mut go = go_peer(&script, "server", &addr.to_string());
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
