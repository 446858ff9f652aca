//! The client on real networks (issue 12), end to end with real peers on
//! 127.0.0.1: URLs with paths and queries, a server that is not up yet, a
//! refusal that ends the client with exit 2, `wss://` against an
//! independent TLS server (Python `websockets`, `tests/tls_peer.py`), and
//! HTTP CONNECT proxies through a real tinyproxy.
//!
//! The TLS and proxy tests skip, saying so on stderr (visible in a plain
//! `cargo test`), when Python's `websockets` or `tinyproxy` is missing;
//! `.ci/run` installs both. They need the `tls` and `proxy` features (the
//! URL test `urls`, the headers one `headers` too); without those their
//! helpers go unused, hence the `allow`.
#![allow(dead_code, unused_imports)]

use std::ffi::OsStr;
use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::fs::TempDir;
use common::process::{replies, Finished, Proc, ANNOUNCE, RECEIVED};
use common::tls_client::{make_certs, TestCerts};
use common::{bounded, TestServer};
use wsloop::client::{Client, ClientOptions};
use wsloop::{Config, Error};

/// The proxy variables, removed from every client's environment so that
/// each test decides its own proxy.
const PROXY_VARS: [&str; 5] = [
    "http_proxy",
    "https_proxy",
    "HTTPS_PROXY",
    "no_proxy",
    "NO_PROXY",
];

/// Time for a peer program (Python, tinyproxy) to start listening.
const PEER_START_SECS: u64 = 20;

/// Says on stderr why a test skips. libtest captures `eprint!` but not
/// writes to the stderr handle itself, so this shows in a plain run.
fn skip(why: &str) {
    let _ = writeln!(std::io::stderr(), "SKIPPED: {why}");
}

/// An address that was just free: nothing listens there now.
fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

/// Polls until `addr` accepts a connection (for peers that announce
/// nothing), within `secs`.
fn wait_accepting(peer: &mut Proc, addr: SocketAddr, secs: u64) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err() {
        if Instant::now() >= deadline {
            peer.fail(&format!("{addr} never accepted a connection"));
        }
        thread::sleep(Duration::from_millis(20));
    }
}

/// `wsloop server --address ADDR ARGS`, once it has announced itself.
fn server_at(addr: SocketAddr, args: &[&str]) -> Proc {
    let address = addr.to_string();
    let mut all = vec!["server", "--address", &address];
    all.extend(args);
    let mut server = Proc::wsloop("server", &all, None);
    server.wait_for_line(10, "the announcement", |l| l.starts_with(ANNOUNCE));
    server
}

/// `wsloop client ARGS` with no proxy variables but `env`'s.
fn client(args: &[&str], env: &[(&str, Option<&str>)]) -> Proc {
    let mut all: Vec<(&str, Option<&str>)> = PROXY_VARS.iter().map(|&v| (v, None)).collect();
    all.extend_from_slice(env);
    Proc::wsloop_env("client", args, &all)
}

/// Asserts the client exited 0 with `n` successful replies.
fn assert_replies(run: &Finished, n: usize) {
    assert!(run.status.success(), "client failed: {run:#?}");
    let replies = replies(&run.stdout);
    assert_eq!(replies.len(), n, "{run:#?}");
    assert!(replies.iter().all(|r| r["success"] == true), "{run:#?}");
}

/// Asserts the client exited 2 (a refusal) naming `reason` on stderr.
fn assert_refused(run: &Finished, reason: &str) {
    assert_eq!(run.status.code(), Some(2), "expected exit 2: {run:#?}");
    let last = run.stderr.last().map(String::as_str).unwrap_or_default();
    assert!(last.contains(reason), "stderr lacks {reason:?}: {run:#?}");
    assert!(replies(&run.stdout).is_empty(), "{run:#?}");
}

// ---------------------------------------------------------------------------
// URLs, start-up and refusals (no external peer needed).
// ---------------------------------------------------------------------------

#[test]
#[cfg(feature = "urls")]
fn urls_with_path_and_query_dial_and_a_wrong_path_is_a_typed_404() {
    let server = TestServer::start(Config::default());
    let port = server.addr.port();
    let ex = smol::Executor::new();
    bounded(
        20,
        ex.run(async {
            let url = format!("ws://127.0.0.1:{port}/server?x=1");
            let client = Client::connect(&ex, ClientOptions::new(url), common::seed)
                .await
                .expect("connect by URL");
            let reply = client.request("Eject the hot dog 1.").await.expect("reply");
            assert!(reply.success);
            client.close().await.expect("close");

            // The URL's path is what is asked for: elsewhere is a 404, a
            // refusal that retrying will not mend.
            let url = format!("ws://127.0.0.1:{port}/elsewhere");
            let refused = Client::connect(&ex, ClientOptions::new(url), common::seed).await;
            match refused {
                Err(err @ Error::Refused { status: 404, .. }) => assert!(!err.is_transient()),
                Err(other) => panic!("expected a 404 refusal, got {other}"),
                Ok(_) => panic!("connected to /elsewhere"),
            }
        }),
    );

    let url = format!("ws://127.0.0.1:{port}/server?x=1");
    let run = client(
        &[
            "client",
            "--address",
            &url,
            "--count",
            "1",
            "--interval",
            "0.05",
        ],
        &[],
    )
    .finish(10);
    assert_replies(&run, 1);
    assert!(
        run.stdout[0].starts_with(&format!("Connected to ws://127.0.0.1:{port}/server?x=1")),
        "{run:#?}"
    );
}

#[test]
fn a_client_started_before_its_server_connects_once_it_is_up() {
    let addr = free_addr();
    let address = addr.to_string();
    let args = [
        "client",
        "--address",
        &address,
        "--count",
        "1",
        "--interval",
        "0.05",
        "--reconnect-delay",
        "50ms",
        "--max-reconnect-delay",
        "200ms",
    ];
    let mut client = client(&args, &[]);
    // The first dial has failed and the client is waiting, not gone.
    client.wait_for_stderr(10, "`cannot reach`", |l| l.contains("cannot reach"));
    let _server = server_at(addr, &[]);
    let run = client.finish(10);
    assert_replies(&run, 1);
    // One connection, logged once (the retry's success used to be logged
    // a second time by the start-up path).
    let logged = run
        .stderr
        .iter()
        .filter(|l| l.contains("connected to ws://"));
    assert_eq!(logged.count(), 1, "{run:#?}");
}

#[test]
fn a_refusal_at_start_exits_2_at_once() {
    let dir = TempDir::new("client_net-refusal-at-start");
    let token = dir.join("token");
    std::fs::write(&token, "right").expect("write the token");
    let addr = free_addr();
    let _server = server_at(addr, &["--token-file", token.to_str().expect("utf-8 path")]);
    let started = Instant::now();
    // Reconnecting is on (the default): a 401 must not be retried.
    let run = client(
        &["client", "--address", &addr.to_string(), "--count", "1"],
        &[],
    )
    .finish(10);
    assert_refused(&run, "401");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// A TCP server on a thread of its own that reads each connection's
/// request head and answers it with `answer` (nothing at all when empty),
/// then holds the connection until the peer goes.
fn broken_server(answer: &'static [u8]) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(20)));
                let _ = common::read_head(&mut stream);
                let _ = stream.write_all(answer);
                // Hold it until the client gives up and closes.
                let _ = std::io::Read::read_to_end(&mut stream, &mut Vec::new());
            });
        }
    });
    addr
}

#[test]
fn a_server_that_breaks_the_handshake_is_retried_then_given_up_with_its_reason() {
    // The outside check's broken servers, which held: each attempt fails
    // with a reason naming what was wrong, the client retries (none of
    // these is a refusal), and --max-attempts ends it with exit 1 in
    // bounded time, never a hang or a connection taken for open.
    let cases: [(&[u8], &str); 4] = [
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Accept: AAAAAAAAAAAAAAAAAAAAAAAAAAA=\r\n\r\n",
            "Sec-WebSocket-Accept does not match",
        ),
        (
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
            "Sec-WebSocket-Accept does not match",
        ),
        (b"\x00\xff garbage\r\n\r\n", "malformed HTTP head"),
        (b"", "timed out"),
    ];
    for (answer, reason) in cases {
        let addr = broken_server(answer).to_string();
        let started = Instant::now();
        let args = [
            "client",
            "--address",
            &addr,
            "--count",
            "1",
            "--max-attempts",
            "2",
            "--reconnect-delay",
            "50ms",
            "--handshake-timeout",
            "1s",
        ];
        let run = client(&args, &[]).finish(20);
        assert_eq!(run.status.code(), Some(1), "{reason}: {run:#?}");
        let last = run.stderr.last().map(String::as_str).unwrap_or_default();
        assert!(
            last.contains("gave up connecting after 2 attempts"),
            "{run:#?}"
        );
        assert!(last.contains(reason), "stderr lacks {reason:?}: {run:#?}");
        assert!(
            !run.stdout.iter().any(|l| l.starts_with("Connected")),
            "{run:#?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{reason}: {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn a_refusal_after_a_drop_exits_2_at_once() {
    let dir = TempDir::new("client_net-refusal-after-drop");
    let (right, changed) = (dir.join("right"), dir.join("changed"));
    std::fs::write(&right, "right").expect("write a token");
    std::fs::write(&changed, "changed").expect("write a token");
    let addr = free_addr();
    let mut server = server_at(addr, &["--token-file", right.to_str().expect("utf-8")]);
    let address = addr.to_string();
    let args = [
        "client",
        "--address",
        &address,
        "--token-file",
        right.to_str().expect("utf-8"),
        "--interval",
        "0.05",
        "--reconnect-delay",
        "50ms",
        "--max-reconnect-delay",
        "200ms",
    ];
    let mut client = client(&args, &[]);
    client.wait_for_line(10, "the first reply", |l| l.starts_with(RECEIVED));

    // The server comes back with another token: the client's is now
    // refused, and asking again will not change that.
    server.sigterm();
    let _ = server.finish(10);
    let _server = server_at(addr, &["--token-file", changed.to_str().expect("utf-8")]);
    let run = client.finish(10);
    assert_eq!(run.status.code(), Some(2), "expected exit 2: {run:#?}");
    let last = run.stderr.last().map(String::as_str).unwrap_or_default();
    assert!(last.contains("401"), "{run:#?}");
}

// ---------------------------------------------------------------------------
// wss:// against Python `websockets`.
// ---------------------------------------------------------------------------

/// Whether Python's `websockets` (the new asyncio API) is importable.
fn python_websockets() -> bool {
    let ok = Command::new("python3")
        .args(["-c", "import websockets.asyncio.server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if !ok {
        skip("python3 with the `websockets` package is missing (pip install websockets)");
    }
    ok
}

/// The TLS peer with a leaf for `localhost` only, and its address.
fn tls_peer(dir: &Path) -> (Proc, SocketAddr, TestCerts) {
    let certs = make_certs(dir, &["localhost"]);
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/tls_peer.py");
    let args = [
        script.as_os_str(),
        certs.cert.as_os_str(),
        certs.key.as_os_str(),
    ];
    let mut peer = Proc::spawn("tls peer", OsStr::new("python3"), &args, None);
    let line = peer.wait_for_line(PEER_START_SECS, "`listening on`", |l| {
        l.starts_with("listening on ")
    });
    let addr = line
        .trim_start_matches("listening on ")
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
    (peer, addr, certs)
}

#[cfg(all(feature = "tls", feature = "headers"))]
#[test]
fn wss_with_the_ca_gets_replies_and_sends_the_headers() {
    if !python_websockets() {
        return;
    }
    let dir = TempDir::new("client_net-wss-ca");
    let (mut peer, addr, certs) = tls_peer(&dir);
    let url = format!("wss://localhost:{}/server?site=7", addr.port());
    let ca = certs.ca.to_str().expect("utf-8");
    let args = [
        "client",
        "--address",
        &url,
        "--ca",
        ca,
        "--count",
        "2",
        "--interval",
        "0.05",
        "--header",
        "X-Device-Id: hotdog-17",
    ];
    let run = client(&args, &[]).finish(15);
    assert_replies(&run, 2);
    // What the server saw: the URL's path and query, and our header.
    let deadline = Instant::now() + Duration::from_secs(5);
    assert_eq!(
        peer.next_line(deadline).as_deref(),
        Some("path /server?site=7")
    );
    assert_eq!(
        peer.next_line(deadline).as_deref(),
        Some("header X-Device-Id: hotdog-17")
    );
}

#[cfg(feature = "tls")]
#[test]
fn wss_without_the_ca_is_refused_with_exit_2_and_the_reason() {
    if !python_websockets() {
        return;
    }
    let dir = TempDir::new("client_net-wss-no-ca");
    let (_peer, addr, _certs) = tls_peer(&dir);
    let url = format!("wss://localhost:{}/server", addr.port());
    let started = Instant::now();
    let run = client(&["client", "--address", &url, "--count", "1"], &[]).finish(10);
    assert_refused(&run, "certificate");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[cfg(feature = "tls")]
#[test]
fn wss_to_a_name_the_certificate_lacks_is_refused() {
    if !python_websockets() {
        return;
    }
    let dir = TempDir::new("client_net-wss-name");
    let (_peer, addr, certs) = tls_peer(&dir);
    // The leaf is for `localhost`; 127.0.0.1 is the same server under a
    // name the certificate does not carry.
    let url = format!("wss://127.0.0.1:{}/server", addr.port());
    let ca = certs.ca.to_str().expect("utf-8");
    let run = client(
        &["client", "--address", &url, "--ca", ca, "--count", "1"],
        &[],
    )
    .finish(10);
    assert_refused(&run, "not valid for name");
}

// ---------------------------------------------------------------------------
// CONNECT proxies through tinyproxy.
// ---------------------------------------------------------------------------

/// A tinyproxy of the test's own, with `BasicAuth user pass`: stopped and
/// its files removed when dropped.
struct Tinyproxy {
    proc: Proc,
    addr: SocketAddr,
    log: PathBuf,
}

impl Tinyproxy {
    /// Starts one on a free port, or `None` (having said why) without it.
    fn start(dir: &Path) -> Option<Tinyproxy> {
        let Ok(program) = which("tinyproxy") else {
            skip("tinyproxy is not installed (apt-get install tinyproxy)");
            return None;
        };
        let addr = free_addr();
        let log = dir.join("tinyproxy.log");
        let config = dir.join("tinyproxy.conf");
        // No ConnectPort line: CONNECT may reach any port (our servers
        // are on random ones).
        let text = format!(
            "Port {}\nListen 127.0.0.1\nTimeout 30\nMaxClients 20\nAllow 127.0.0.1\n\
             PidFile \"{}\"\nLogFile \"{}\"\nLogLevel Connect\nBasicAuth user pass\n",
            addr.port(),
            dir.join("tinyproxy.pid").display(),
            log.display(),
        );
        std::fs::write(&config, text).expect("write tinyproxy.conf");
        let args = [OsStr::new("-d"), OsStr::new("-c"), config.as_os_str()];
        let mut proc = Proc::spawn("tinyproxy", program.as_os_str(), &args, None);
        // It announces nothing on stdout: wait until it accepts.
        wait_accepting(&mut proc, addr, PEER_START_SECS);
        Some(Tinyproxy { proc, addr, log })
    }

    /// `http://[CREDENTIALS@]ADDR`.
    fn url(&self, credentials: &str) -> String {
        format!("http://{credentials}{}", self.addr)
    }

    /// How many tunnels it has opened (its log's `Established` lines).
    fn tunnels(&self) -> usize {
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("CONNECT") && l.contains("Established"))
            .count()
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        // Proc's drop kills it; say what it logged if the test failed.
        if thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let _ = writeln!(
                std::io::stderr(),
                "tinyproxy log:\n{log}\n{}",
                self.proc.context()
            );
        }
    }
}

/// The path of `program` on PATH.
fn which(program: &str) -> Result<PathBuf, ()> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(program))
        .find(|path| path.is_file())
        .ok_or(())
}

#[cfg(feature = "proxy")]
#[test]
fn ws_through_tinyproxy_sends_the_credentials() {
    let dir = TempDir::new("client_net-proxy-ws");
    let Some(proxy) = Tinyproxy::start(&dir) else {
        return;
    };
    let server = TestServer::start(Config::default());
    let url = format!("ws://{}/server", server.addr);
    let base = [
        "client",
        "--address",
        &url,
        "--count",
        "1",
        "--interval",
        "0.05",
    ];

    // Without credentials the proxy says 407: a refusal, exit 2.
    let (bare, authed) = (proxy.url(""), proxy.url("user:pass@"));
    let no_auth = [&base[..], &["--proxy", &bare]].concat();
    assert_refused(&client(&no_auth, &[]).finish(10), "407");

    let with_auth = [&base[..], &["--proxy", &authed]].concat();
    assert_replies(&client(&with_auth, &[]).finish(10), 1);
    assert!(proxy.tunnels() >= 1, "tinyproxy opened no tunnel");
}

#[cfg(feature = "proxy")]
#[test]
fn the_proxy_comes_from_http_proxy_unless_no_proxy_names_the_host() {
    let dir = TempDir::new("client_net-proxy-env");
    let Some(proxy) = Tinyproxy::start(&dir) else {
        return;
    };
    let server = TestServer::start(Config::default());
    let url = format!("ws://{}/server", server.addr);
    let args = [
        "client",
        "--address",
        &url,
        "--count",
        "1",
        "--interval",
        "0.05",
    ];
    // A proxy without credentials answers 407: proof it was asked.
    let via = proxy.url("");
    let run = client(&args, &[("http_proxy", Some(&via))]).finish(10);
    assert_refused(&run, "407");

    let bypass = [
        ("http_proxy", Some(via.as_str())),
        ("no_proxy", Some("localhost,127.0.0.1")),
    ];
    assert_replies(&client(&args, &bypass).finish(10), 1);
    assert_eq!(proxy.tunnels(), 0, "no_proxy went through the proxy");
}

#[cfg(all(feature = "tls", feature = "proxy"))]
#[test]
fn wss_through_tinyproxy_from_https_proxy() {
    if !python_websockets() {
        return;
    }
    let dir = TempDir::new("client_net-proxy-wss");
    let Some(proxy) = Tinyproxy::start(&dir) else {
        return;
    };
    let (_peer, addr, certs) = tls_peer(&dir);
    let url = format!("wss://localhost:{}/server", addr.port());
    let ca = certs.ca.to_str().expect("utf-8");
    let args = [
        "client",
        "--address",
        &url,
        "--ca",
        ca,
        "--count",
        "1",
        "--interval",
        "0.05",
    ];
    let via = proxy.url("user:pass@");
    let run = client(&args, &[("https_proxy", Some(&via))]).finish(15);
    assert_replies(&run, 1);
    assert_eq!(
        proxy.tunnels(),
        1,
        "the wss:// connection bypassed the proxy"
    );
}
