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
use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_wsloop");

/// The first line `wsloop server` prints, up to the address.
const ANNOUNCE: &str = "wsloop server on http://";

/// The prefix of every reply line both clients print.
const RECEIVED: &str = "Received from server: ";

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

// ---------------------------------------------------------------------------
// Harness: child processes with bounded, channel-based output reading.
// ---------------------------------------------------------------------------

// ---------------------------------------------------------------------------
// Harness: child processes with bounded, channel-based output reading.
// ---------------------------------------------------------------------------

/// Reads `pipe` line by line on a thread; the channel disconnects at EOF.
fn lines_of(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// A child process whose stdout and stderr lines arrive on channels.
/// Dropping it kills and reaps the process, so no test leaves one behind.
struct Proc {
    name: String,
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    out_seen: Vec<String>,
    err_seen: Vec<String>,
}

/// How a process ended and everything it printed.
#[derive(Debug)]
struct Finished {
    status: ExitStatus,
    stdout: Vec<String>,
    /// Shown (through `Debug`) in failure messages.
    #[allow(dead_code)]
    stderr: Vec<String>,
}

impl Proc {
    /// Starts `program ARGS` with stdin on /dev/null.
    fn spawn(name: &str, program: &OsStr, args: &[&OsStr]) -> Proc {
        let mut child = Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({program:?} {args:?}): {e}"));
        let stdout = lines_of(child.stdout.take().expect("stdout was piped"));
        let stderr = lines_of(child.stderr.take().expect("stderr was piped"));
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            out_seen: Vec::new(),
            err_seen: Vec::new(),
        }
    }

    /// Starts `wsloop ARGS`.
    fn wsloop(name: &str, args: &[&str]) -> Proc {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        Proc::spawn(name, OsStr::new(BIN), &args)
    }

    /// Starts `go-peer.sh MODE ADDR` (through bash; the script `exec`s the
    /// Go binary, so this pid is the Go program's and dropping kills it).
    fn go_peer(script: &Path, mode: &str, addr: &str) -> Proc {
        let args = [script.as_os_str(), OsStr::new(mode), OsStr::new(addr)];
        Proc::spawn(&format!("go {mode}"), OsStr::new("bash"), &args)
    }

    /// Moves whatever stderr has printed so far into `err_seen`.
    fn collect_stderr(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.err_seen.push(line);
        }
    }

    /// Everything seen so far, for failure messages.
    fn context(&mut self) -> String {
        self.collect_stderr();
        format!(
            "{} stdout so far: {:#?}\n{} stderr so far: {:#?}",
            self.name, self.out_seen, self.name, self.err_seen
        )
    }

    /// Fails the test with `what` and everything the process printed.
    fn fail(&mut self, what: &str) -> ! {
        let context = self.context();
        panic!("{}: {what}\n{context}", self.name)
    }

    /// The next stdout line, or `None` at end of output; fails the test at
    /// `deadline`.
    fn next_line(&mut self, deadline: Instant) -> Option<String> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.stdout.recv_timeout(left) {
            Ok(line) => {
                self.out_seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => self.fail("no stdout line in time"),
        }
    }

    /// Reads stdout until a line satisfies `wanted`, within `secs` seconds.
    fn wait_for_line(&mut self, secs: u64, what: &str, wanted: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            match self.next_line(deadline) {
                Some(line) if wanted(&line) => return line,
                Some(_) => continue,
                None => self.fail(&format!("output ended before {what}")),
            }
        }
    }

    /// Waits for the process to exit within `secs` seconds and returns its
    /// status with all of its output.
    fn finish(&mut self, secs: u64) -> Finished {
        let deadline = Instant::now() + Duration::from_secs(secs);
        // Both pipes reach EOF when the process exits: that is the signal.
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stdout.recv_timeout(left) {
                Ok(line) => self.out_seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("did not exit within {secs} s"))
                }
            }
        }
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => self.err_seen.push(line),
                Err(RecvTimeoutError::Disconnected) => break,
                Err(RecvTimeoutError::Timeout) => {
                    self.fail(&format!("did not exit within {secs} s"))
                }
            }
        }
        // The pipes are closed, so the exit is at most moments away.
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Ok(None) => self.fail(&format!("output closed but no exit within {secs} s")),
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        };
        Finished {
            status,
            stdout: self.out_seen.clone(),
            stderr: self.err_seen.clone(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Harmless if the process already exited and was reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `wsloop server --address 127.0.0.1:0` and returns it with the
/// address parsed from its first stdout line.
fn start_server() -> (Proc, SocketAddr) {
    let mut server = Proc::wsloop("our server", &["server", "--address", "127.0.0.1:0"]);
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = server
        .next_line(deadline)
        .unwrap_or_else(|| server.fail("exited before announcing its address"));
    let addr = first
        .strip_prefix(ANNOUNCE)
        .and_then(|rest| rest.strip_suffix("/ (WebSocket at /server)"))
        .unwrap_or_else(|| panic!("unexpected first server line {first:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {first:?}: {e}"));
    (server, addr)
}

/// Asserts our client exited 0 after the replies to hot dogs 1..=n, in order.
fn assert_hot_dog_replies(run: &Finished, n: u64) {
    assert!(run.status.success(), "our client failed: {run:#?}");
    let replies: Vec<serde_json::Value> = run
        .stdout
        .iter()
        .filter_map(|line| line.strip_prefix(RECEIVED))
        .map(|json| {
            serde_json::from_str(json).unwrap_or_else(|e| panic!("reply {json:?} is not JSON: {e}"))
        })
        .collect();
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
    let (_server, addr) = start_server();

    let mut go = Proc::go_peer(&script, "client", &addr.to_string());
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

    let mut go = Proc::go_peer(&script, "server", &addr.to_string());
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
    )
    .finish(15);
    assert_hot_dog_replies(&run, 3);
    // The Go server saw a WebSocket client (so our handshake, Origin
    // included, passed its checks).
    go.wait_for_line(5, "`Client Connected`", |l| l == "Client Connected");
}
