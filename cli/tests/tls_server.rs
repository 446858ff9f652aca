//! `wsloop server --cert/--key` against real TLS peers: Python's ssl module
//! with the `websockets` package (tests/python/wss_peer.py), trusting only
//! a CA the test makes. Skipped, with a note, where python3 or websockets
//! is missing (`.ci/run` installs it).
#![cfg(feature = "tls")]

mod common;

use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::process::{announced_addr, start_server, Finished, Proc};
use common::tls::{TestPki, Validity};

/// The Python peer, next to this file.
const PEER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/python/wss_peer.py");

/// Whether python3 with `websockets` is here; prints why not otherwise.
fn have_python_websockets() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import websockets.asyncio.client"])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        eprintln!("skipped: needs python3 with `websockets` (pip install websockets)");
    }
    found
}

/// Starts `wsloop server --cert --key ARGS` and returns it with its address
/// (read from its first line, which names https://).
fn start_tls_server(cert: &Path, key: &Path, args: &[&str]) -> (Proc, SocketAddr) {
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let mut all = vec![
        "server",
        "--cert",
        cert,
        "--key",
        key,
        "--address",
        "127.0.0.1:0",
    ];
    all.extend(args);
    let mut server = Proc::wsloop("tls server", &all, None);
    let first = server.wait_for_line(10, "the address", |l| l.starts_with("wsloop server on"));
    let addr = announced_addr(&first)
        .unwrap_or_else(|| server.fail(&format!("unexpected first line {first:?}")));
    (server, addr)
}

/// Runs the Python peer to its end (at most 20 s).
fn python(mode: &str, url: &str, ca: &Path) -> Finished {
    let args = [PEER.as_ref(), mode.as_ref(), url.as_ref(), ca.as_os_str()];
    Proc::spawn("python peer", "python3".as_ref(), &args, None).finish(20)
}

/// Stops a server with SIGTERM and returns everything it printed.
fn stop(mut server: Proc) -> Finished {
    server.sigterm();
    server.finish(10)
}

/// The lines of `run`'s stderr that contain `text`.
fn stderr_with<'a>(run: &'a Finished, text: &str) -> Vec<&'a String> {
    run.stderr.iter().filter(|l| l.contains(text)).collect()
}

#[test]
fn wss_round_trip_and_https_pages() {
    if !have_python_websockets() {
        return;
    }
    let pki = TestPki::new("tls-roundtrip");
    let (server, addr) = start_tls_server(&pki.cert, &pki.key, &[]);

    let run = python("roundtrip", &format!("wss://{addr}/server"), &pki.ca);
    assert!(run.status.success(), "{run:#?}");
    assert_eq!(run.stdout[0], "cn leaf");
    let reply: serde_json::Value =
        serde_json::from_str(run.stdout[1].strip_prefix("reply ").expect("a reply line"))
            .expect("the reply is JSON");
    assert_eq!(reply["requestID"], 1);
    assert_eq!(reply["success"], true);
    assert_eq!(
        reply["someOtherThing"],
        "Command 'Eject the hot dog 1.' processed successfully."
    );

    let page = python("get", &format!("https://{addr}/"), &pki.ca);
    assert!(page.status.success(), "{page:#?}");
    assert_eq!(page.stdout[0], "status 200");
    assert!(page.stdout.iter().any(|l| l.contains("<html")), "{page:#?}");

    let stats = python("get", &format!("https://{addr}/stats"), &pki.ca);
    assert!(stats.status.success(), "{stats:#?}");
    assert_eq!(stats.stdout[0], "status 200");
    assert!(stats.stdout[1].contains("\"received\":1"), "{stats:#?}");
    stop(server);
}

/// Messages that span many TLS records, and many records in one read:
/// the server's own TLS stream (src/tls/stream.rs) keeps partial records
/// and decrypted bytes that do not fit the reader's buffer.
#[test]
fn large_and_pipelined_messages_over_wss() {
    if !have_python_websockets() {
        return;
    }
    let pki = TestPki::new("tls-bulk");
    let (server, addr) = start_tls_server(&pki.cert, &pki.key, &[]);
    let run = python("bulk", &format!("wss://{addr}/server"), &pki.ca);
    assert!(run.status.success(), "{run:#?}");
    // The seed reply quotes the command: 200,000 bytes of it and the rest.
    let expected = "Command '' processed successfully.".len() + 200_000;
    assert_eq!(run.stdout[0], "cn leaf", "{run:#?}");
    assert_eq!(run.stdout[1], format!("big 1 {expected}"), "{run:#?}");
    assert_eq!(run.stdout[2], "in order", "{run:#?}");
    stop(server);
}

#[test]
fn plain_http_on_the_tls_port_gets_a_400_and_one_log_line() {
    let pki = TestPki::new("tls-plain");
    let (server, addr) = start_tls_server(&pki.cert, &pki.key, &[]);
    let status = common::http_status(addr, b"GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
    assert_eq!(status, 400);
    // Counted as a failed TLS handshake (/metrics over https://, no token set).
    if cfg!(feature = "metrics") && have_python_websockets() {
        let metrics = python("get", &format!("https://{addr}/metrics"), &pki.ca);
        assert_eq!(metrics.stdout[0], "status 200", "{metrics:#?}");
        let failures = "wsloop_tls_handshake_failures_total 1";
        assert!(metrics.stdout.iter().any(|l| l == failures), "{metrics:#?}");
    }
    let run = stop(server);
    assert_eq!(
        stderr_with(&run, "plain HTTP on the TLS port").len(),
        1,
        "{run:#?}"
    );
}

#[test]
fn a_client_hello_on_a_plain_port_gets_one_log_line() {
    if !have_python_websockets() {
        return;
    }
    let pki = TestPki::new("tls-hello");
    let (server, addr) = start_server("plain server", &["server"]);
    let run = python("roundtrip", &format!("wss://{addr}/server"), &pki.ca);
    assert!(
        !run.status.success(),
        "TLS to a plain port cannot succeed: {run:#?}"
    );
    let run = stop(server);
    let lines = stderr_with(&run, "TLS handshake on a plain-HTTP port");
    assert_eq!(lines.len(), 1, "{run:#?}");
}

#[test]
fn start_up_errors_are_one_line() {
    let pki = TestPki::new("tls-errors");
    let key = pki.key.to_str().unwrap();
    let cert = pki.cert.to_str().unwrap();

    // A missing file: a failure naming it.
    // Each on a free port: the default 8080 may be another test's (and a
    // start-up error found after binding would then read "address in use").
    let any = ["--address", "127.0.0.1:0"];
    let args = [
        "server",
        "--cert",
        "/nonexistent/cert.pem",
        "--key",
        key,
        any[0],
        any[1],
    ];
    let run = Proc::wsloop("missing cert", &args, None).finish(10);
    assert!(!run.status.success());
    assert_eq!(run.stderr.len(), 1, "{run:#?}");
    assert!(run.stderr[0].contains("/nonexistent/cert.pem"), "{run:#?}");
    assert!(run.stderr[0].contains("No such file"), "{run:#?}");

    // A file that is not PEM.
    let garbage = pki.path("garbage.pem");
    fs::write(&garbage, "hello\n").unwrap();
    let args = [
        "server",
        "--cert",
        cert,
        "--key",
        garbage.to_str().unwrap(),
        any[0],
        any[1],
    ];
    let run = Proc::wsloop("garbage key", &args, None).finish(10);
    assert!(!run.status.success());
    assert_eq!(run.stderr.len(), 1, "{run:#?}");
    assert!(run.stderr[0].contains("garbage.pem"), "{run:#?}");

    // Another leaf's key.
    let (_, other_key) = pki.write_leaf("other", "other", Validity::Current);
    let args = [
        "server",
        "--cert",
        cert,
        "--key",
        other_key.to_str().unwrap(),
        any[0],
        any[1],
    ];
    let run = Proc::wsloop("mismatched key", &args, None).finish(10);
    assert!(!run.status.success());
    assert_eq!(run.stderr.len(), 1, "{run:#?}");
    assert!(
        run.stderr[0].contains("does not match the certificate"),
        "{run:#?}"
    );

    // An expired certificate: a warning, and the server runs.
    let (old_cert, old_key) = pki.write_leaf("old", "old", Validity::Expired);
    let (server, _) = start_tls_server(&old_cert, &old_key, &[]);
    let run = stop(server);
    assert!(run.stopped_by_sigterm(), "{run:#?}");
    let warnings = stderr_with(&run, "expired on 2001-01-01 00:00:00 UTC");
    assert_eq!(warnings.len(), 1, "{run:#?}");
}

/// A Python peer that holds its connection open and does one round trip
/// per line written to it.
struct HeldPeer {
    child: Child,
    lines: mpsc::Receiver<String>,
}

impl HeldPeer {
    fn connect(url: &str, ca: &Path) -> HeldPeer {
        let mut child = Command::new("python3")
            .args([PEER.as_ref(), "hold".as_ref(), url.as_ref(), ca.as_os_str()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("start python3");
        let stdout = child.stdout.take().expect("stdout was piped");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        HeldPeer { child, lines }
    }

    fn next_line(&self) -> String {
        self.lines
            .recv_timeout(Duration::from_secs(15))
            .expect("a line from the held peer in time")
    }

    fn round_trip(&mut self) -> String {
        let stdin = self.child.stdin.as_mut().expect("stdin was piped");
        stdin
            .write_all(b"go\n")
            .and_then(|()| stdin.flush())
            .expect("write to the peer");
        self.next_line()
    }
}

impl Drop for HeldPeer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_renewed_certificate_serves_new_connections_and_old_ones_stay() {
    if !have_python_websockets() {
        return;
    }
    let pki = TestPki::new("tls-renew");
    let (server, addr) = start_tls_server(&pki.cert, &pki.key, &[]);
    let url = format!("wss://{addr}/server");
    let mut old = HeldPeer::connect(&url, &pki.ca);
    assert_eq!(old.next_line(), "cn leaf");
    assert!(old.round_trip().starts_with("reply "));

    // Renew in place, as certbot's deploy hooks or a copy would.
    let (cert, key) = pki.leaf_pem("renewed", Validity::Current);
    fs::write(&pki.key, key).unwrap();
    fs::write(&pki.cert, cert).unwrap();

    let started = Instant::now();
    let run = python("roundtrip", &url, &pki.ca);
    assert!(run.status.success(), "{run:#?}");
    assert_eq!(
        run.stdout[0], "cn renewed",
        "the next handshake uses the new files"
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    // The connection made before the renewal still works.
    assert!(old.round_trip().starts_with("reply "));
    drop(old);

    let run = stop(server);
    assert_eq!(
        stderr_with(&run, "reloaded the TLS certificate").len(),
        1,
        "{run:#?}"
    );
}

#[test]
fn a_tls_port_with_a_silent_peer_closes_within_the_handshake_timeout() {
    let pki = TestPki::new("tls-silent");
    let (server, addr) = start_tls_server(&pki.cert, &pki.key, &["--handshake-timeout", "1s"]);
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let started = Instant::now();
    let mut buf = [0u8; 16];
    let read = std::io::Read::read(&mut stream, &mut buf);
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    stop(server);
}
