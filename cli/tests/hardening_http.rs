//! Attacks on the server's accept and HTTP side (issue 11), each against a
//! real server over real sockets: the `wsloop` binary where the process
//! itself is observed (its RSS, its open descriptors, its logs), the
//! library's server where a setting has no command-line option.
//!
//! The tests print what they measured (`--nocapture` shows it).

use std::fs;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
#[cfg(feature = "static-files")]
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread;
use std::time::{Duration, Instant};

mod common;

use common::fs::TempDir;
use common::process::{start_server, Proc, BIN};
use common::{client_frame, get, http_status, raw_upgrade, read_head, wait_until};
#[cfg(feature = "static-files")]
use wsloop::http::StaticFiles;
use wsloop::Message;

#[cfg(feature = "static-files")]
/// Size of the big static file: far more than any socket buffer.
const BIG_FILE: u64 = 64 << 20;

#[cfg(feature = "static-files")]
/// A www directory with `hello.txt` and a sparse 64 MiB `big.bin`.
fn www_with_big_file() -> TempDir {
    let www = TempDir::new("www");
    fs::write(www.join("hello.txt"), "hello").expect("write hello.txt");
    let big = fs::File::create(www.join("big.bin")).expect("create big.bin");
    big.set_len(BIG_FILE).expect("size big.bin");
    www
}

#[cfg(feature = "static-files")]
/// The resident set of process `pid` in KiB, from /proc.
fn rss_kib(pid: u32) -> u64 {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc status")
}

/// How many file descriptors process `pid` holds, from /proc.
fn fd_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("read /proc fd")
        .count()
}

/// Sends `request` and returns the response head plus, unless it is a 101,
/// the body up to the server's close.
fn exchange(addr: SocketAddr, request: &str) -> (String, String) {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    stream.write_all(request.as_bytes()).expect("send request");
    let head = read_head(&mut stream);
    let mut body = Vec::new();
    if !head.starts_with("HTTP/1.1 101") {
        let _ = stream.read_to_end(&mut body);
    }
    (head, String::from_utf8_lossy(&body).into_owned())
}

/// A WebSocket upgrade of `/server` with `Host: host` and extra header lines.
fn upgrade_request(host: &str, extra: &str) -> String {
    format!(
        "GET /server HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{extra}\r\n"
    )
}

// ---------------------------------------------------------------------------
// 2. Static files: a bounded read-ahead, and the write timeout.
// ---------------------------------------------------------------------------

#[cfg(feature = "static-files")]
#[test]
fn slow_readers_of_a_big_file_hold_a_bounded_buffer() {
    const READERS: u64 = 16;
    // Per connection, with room for the allocator's slack; the old 8 MiB
    // pipe per connection is far over it.
    const BOUND_KIB: u64 = 1024;
    let www = www_with_big_file();
    let (mut server, addr) = start_server("server", &["server", "--www", www.arg(), "-q"]);
    assert_eq!(get(addr, "/hello.txt"), 200, "warm-up");
    let before = rss_kib(server.pid());

    // Each reader takes the response head and then stops reading.
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut stream = TcpStream::connect(addr).expect("tcp connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .expect("read timeout");
        let request = format!("GET /big.bin HTTP/1.1\r\nHost: {addr}\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("send request");
        let head = read_head(&mut stream);
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        readers.push(stream);
    }
    // The read-ahead fills within moments; watch it for two seconds.
    let window = Instant::now() + Duration::from_secs(2);
    let mut peak = rss_kib(server.pid());
    while Instant::now() < window && peak - before.min(peak) <= READERS * BOUND_KIB {
        thread::sleep(Duration::from_millis(50));
        peak = peak.max(rss_kib(server.pid()));
    }
    let growth = peak.saturating_sub(before);
    eprintln!(
        "{READERS} stalled readers of a 64 MiB file: server RSS {before} KiB -> {peak} KiB, \
         {} KiB per connection",
        growth / READERS
    );
    if growth > READERS * BOUND_KIB {
        server.fail(&format!(
            "RSS grew {growth} KiB for {READERS} stalled readers (bound {} KiB)",
            READERS * BOUND_KIB
        ));
    }
    drop(readers);
}

#[cfg(feature = "static-files")]
#[test]
fn a_reader_that_stops_is_dropped_after_the_write_timeout() {
    let www = www_with_big_file();
    let config = wsloop::Config::default().with_write_timeout(Duration::from_secs(1));
    let files = StaticFiles::from_dir(&www).expect("www dir");
    let server = common::TestServer::start_with(config, Some(files), common::seed);
    let mut stream = TcpStream::connect(server.addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let request = format!("GET /big.bin HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    stream.write_all(request.as_bytes()).expect("send request");
    let head = read_head(&mut stream);
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    // The attack: stop reading for three write timeouts...
    thread::sleep(Duration::from_secs(3));
    // ...then read what the server sent before it gave up, up to its close.
    let started = Instant::now();
    let mut received = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received += n as u64,
            Err(err) if err.kind() == ErrorKind::ConnectionReset => break,
            Err(err) => panic!("reading after {received} bytes: {err}"),
        }
        assert!(started.elapsed() < Duration::from_secs(20), "still reading");
    }
    eprintln!("a reader that stopped for 3 s got {received} of {BIG_FILE} bytes");
    assert!(
        received < BIG_FILE,
        "the whole file arrived: the server waited for the stalled reader"
    );
}

// ---------------------------------------------------------------------------
// 4. accept() under large-message load.
// ---------------------------------------------------------------------------

/// A client that pipelines `payload` frames as fast as the server takes
/// them, draining the replies on a second thread.
struct Loader {
    stop: Arc<AtomicBool>,
    stream: TcpStream,
    threads: Vec<thread::JoinHandle<()>>,
}

impl Loader {
    /// Starts loading; `loaded` gets one `()` once replies flow.
    fn start(addr: SocketAddr, frame: Arc<Vec<u8>>, loaded: mpsc::Sender<()>) -> Loader {
        let stream = raw_upgrade(addr);
        let stop = Arc::new(AtomicBool::new(false));
        let mut writer = stream.try_clone().expect("clone stream");
        let mut reader = stream.try_clone().expect("clone stream");
        let write_stop = stop.clone();
        let write = thread::spawn(move || {
            while !write_stop.load(Ordering::Relaxed) {
                if writer.write_all(&frame).is_err() {
                    break;
                }
            }
        });
        let read_stop = stop.clone();
        let read = thread::spawn(move || {
            let mut buf = vec![0u8; 256 * 1024];
            let mut total = 0usize;
            let mut signalled = false;
            while !read_stop.load(Ordering::Relaxed) {
                match reader.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => total += n,
                }
                // Two replies' worth: the server is busy with this client.
                if !signalled && total > 2 << 20 {
                    signalled = true;
                    let _ = loaded.send(());
                }
            }
        });
        Loader {
            stop,
            stream,
            threads: vec![write, read],
        }
    }
}

impl Drop for Loader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.stream.shutdown(Shutdown::Both);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

#[test]
fn new_connections_are_accepted_promptly_under_large_message_load() {
    // The old accept loop, the executor's main future, left a new
    // connection without its 101 for more than 30 s here (debug build, two
    // executor threads). With accept as its own task the wait is what one
    // poll of a busy connection takes (about 4 s each for the accept and
    // the handshake task, in a debug build, while a connection's poll may
    // handle 64 MiB); bounding those polls by bytes (src/connection/)
    // brings it under a second. Generous for a noisy 2-core machine.
    const BOUND: Duration = Duration::from_secs(20);
    let (mut server, addr) = start_server("server", &["server", "-q"]);
    // A request just under the 1 MiB message limit.
    let command = "x".repeat((1 << 20) - 200);
    let text = wsloop::encode(&Message::request(1, &command));
    assert!(text.len() < 1 << 20);
    let frame = Arc::new(client_frame(1, text.as_bytes()));
    let (loaded, is_loaded) = mpsc::channel();
    let _loaders: Vec<Loader> = (0..2)
        .map(|_| Loader::start(addr, frame.clone(), loaded.clone()))
        .collect();
    for _ in 0..2 {
        if is_loaded.recv_timeout(Duration::from_secs(30)).is_err() {
            server.fail("the loaders got no replies");
        }
    }

    let mut worst = Duration::ZERO;
    for _ in 0..5 {
        worst = worst.max(time_to_101(addr));
    }
    eprintln!("time to 101 under two 1 MiB pipelining clients: worst of 5 {worst:?}");
    assert!(
        worst < BOUND,
        "a new connection waited {worst:?} for its 101"
    );
}

/// How long a fresh connection waits for its 101 (up to 30 s, the most
/// this test waits).
fn time_to_101(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    let request = upgrade_request(&addr.to_string(), "");
    stream
        .write_all(request.as_bytes())
        .expect("send handshake");
    let head = read_head(&mut stream);
    let waited = started.elapsed();
    assert!(
        head.starts_with("HTTP/1.1 101"),
        "after {waited:?}: {head:?}"
    );
    waited
}

// ---------------------------------------------------------------------------
// 5. DNS rebinding: the Host check, and the origin's scheme.
// ---------------------------------------------------------------------------

#[test]
fn host_must_name_this_server() {
    let (_server, addr) = start_server("server", &["server", "--allow-host", "chat.example", "-q"]);
    let port = addr.port();

    // The rebinding pair: a foreign name, and the page's own origin.
    let rebound = format!("attacker.example:{port}");
    let origin = format!("Origin: http://{rebound}\r\n");
    let (head, body) = exchange(addr, &upgrade_request(&rebound, &origin));
    assert!(head.starts_with("HTTP/1.1 421"), "{head}");
    assert!(body.contains("--allow-host"), "one-line reason: {body:?}");
    assert_eq!(body.lines().count(), 1, "{body:?}");
    // The same name is refused for plain GETs too: the page could read them.
    let get_rebound = format!("GET / HTTP/1.1\r\nHost: {rebound}\r\n\r\n");
    assert_eq!(http_status(addr, get_rebound.as_bytes()), 421);
    let stats_rebound = format!("GET /stats HTTP/1.1\r\nHost: {rebound}\r\n\r\n");
    assert_eq!(http_status(addr, stats_rebound.as_bytes()), 421);

    // Another scheme on the right host is another origin.
    for scheme in ["https", "foo"] {
        let origin = format!("Origin: {scheme}://{addr}\r\n");
        let (head, body) = exchange(addr, &upgrade_request(&addr.to_string(), &origin));
        assert!(head.starts_with("HTTP/1.1 403"), "{scheme}: {head}");
        assert!(body.contains(scheme), "{scheme}: {body:?}");
    }

    // What names this server: its address, localhost, the allowed name.
    for host in [
        addr.to_string(),
        format!("localhost:{port}"),
        "chat.example".to_string(),
        format!("Chat.Example:{port}"),
    ] {
        let origin = format!("Origin: http://{host}\r\n");
        let (head, _) = exchange(addr, &upgrade_request(&host, &origin));
        assert!(head.starts_with("HTTP/1.1 101"), "{host}: {head}");
    }
    assert_eq!(get(addr, "/"), 200);
}

#[test]
fn a_second_host_header_is_refused_with_400() {
    // Found by the outside check: the Host check read the first `Host`
    // only, so `Host: <ours>` then `Host: attacker.example` passed, while a
    // proxy or cache in front may go by the other one. RFC 9112 (3.2): a
    // request with more than one Host line gets 400.
    let (_server, addr) = start_server("server", &["server", "-q"]);
    for hosts in [
        format!("Host: {addr}\r\nHost: attacker.example"),
        format!("Host: attacker.example\r\nHost: {addr}"),
        format!("Host: {addr}\r\nhost: {addr}"),
    ] {
        let request = format!("GET / HTTP/1.1\r\n{hosts}\r\n\r\n");
        let (head, body) = exchange(addr, &request);
        assert!(head.starts_with("HTTP/1.1 400"), "{hosts:?}: {head}");
        assert!(body.contains("Host"), "a reason naming Host: {body:?}");
    }
    // An upgrade likewise, whichever Host comes second.
    let upgrade = upgrade_request(&addr.to_string(), "Host: attacker.example\r\n");
    let (head, _) = exchange(addr, &upgrade);
    assert!(head.starts_with("HTTP/1.1 400"), "upgrade: {head}");
    // One Host, as every client sends, still passes.
    let (head, _) = exchange(addr, &format!("GET / HTTP/1.1\r\nHost: {addr}\r\n\r\n"));
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
}

#[test]
fn an_upgrade_over_http_1_0_is_refused_with_400() {
    // RFC 6455 (4.1): the opening handshake is HTTP/1.1 or higher.
    let (_server, addr) = start_server("server", &["server", "-q"]);
    let upgrade = upgrade_request(&addr.to_string(), "").replacen("HTTP/1.1", "HTTP/1.0", 1);
    let (head, body) = exchange(addr, &upgrade);
    assert!(head.starts_with("HTTP/1.1 400"), "{head}");
    assert!(
        body.contains("HTTP/1.1"),
        "a reason naming the version: {body:?}"
    );
    // The same upgrade over HTTP/1.1 still switches.
    let (head, _) = exchange(addr, &upgrade_request(&addr.to_string(), ""));
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
}

// ---------------------------------------------------------------------------
// 6. Admission at accept, and the open-file limit.
// ---------------------------------------------------------------------------

#[test]
fn over_limit_connections_are_closed_at_accept() {
    const ADMITTED: usize = 50;
    const REFUSED: usize = 500;
    let limit = ADMITTED.to_string();
    let (mut server, addr) = start_server(
        "server",
        &["server", "--max-connections-per-ip", &limit, "-q"],
    );
    let pid = server.pid();
    let base = fd_count(pid);

    // Silent connections up to the limit: each holds its descriptor.
    let admitted: Vec<TcpStream> = (0..ADMITTED)
        .map(|_| TcpStream::connect(addr).expect("tcp connect"))
        .collect();
    wait_until(10, "the admitted connections", || {
        fd_count(pid) >= base + ADMITTED
    });

    // Past it, each new silent connection is answered and closed at once.
    let started = Instant::now();
    let mut refused = Vec::new();
    for _ in 0..REFUSED {
        let stream = TcpStream::connect(addr).expect("tcp connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("read timeout");
        refused.push(stream);
    }
    for stream in &mut refused {
        let mut answer = Vec::new();
        if let Err(err) = stream.read_to_end(&mut answer) {
            if err.kind() != ErrorKind::ConnectionReset {
                server.fail(&format!("a refused connection was not closed: {err}"));
            }
        }
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 503"),
            "{answer}"
        );
    }
    let elapsed = started.elapsed();
    let held = fd_count(pid);
    eprintln!(
        "{ADMITTED} admitted + {REFUSED} refused silent connections: server holds {held} fds \
         (base {base}); all refusals closed within {elapsed:?}"
    );
    assert!(
        held <= base + ADMITTED + 10,
        "{held} fds held (base {base})"
    );
    drop(admitted);
}

#[test]
fn a_low_open_file_limit_is_reported_with_numbers() {
    // `ulimit -n` sets both limits, so the server cannot raise its own.
    let script = format!("ulimit -n 256 && exec {BIN} server --address 127.0.0.1:0");
    let args = [std::ffi::OsStr::new("-c"), std::ffi::OsStr::new(&script)];
    let mut server = Proc::spawn("server", std::ffi::OsStr::new("sh"), &args, None);
    // The warning is written by the logger thread, maybe after the
    // announcement: wait for the line itself (without the `signals`
    // feature SIGTERM would end the process before a late line is out).
    let warning = server.wait_for_stderr(10, "the open-file warning", |line| {
        line.contains("open-file limit")
    });
    server.sigterm();
    for number in ["256", "10000", "64"] {
        assert!(warning.contains(number), "{number} missing in {warning:?}");
    }
}

// ---------------------------------------------------------------------------
// 9. A FIFO inside --www.
// ---------------------------------------------------------------------------

#[cfg(feature = "static-files")]
#[test]
fn a_fifo_in_www_is_refused_at_once() {
    let www = TempDir::new("fifo");
    fs::write(www.join("hello.txt"), "hello").expect("write hello.txt");
    let fifo = www.join("pipe");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("run mkfifo");
    assert!(made.success() && is_fifo(&fifo));
    let (_server, addr) = start_server("server", &["server", "--www", www.arg(), "-q"]);

    // Concurrent requests for the FIFO; each must be answered (not hang).
    let started = Instant::now();
    let asking: Vec<_> = (0..16)
        .map(|_| thread::spawn(move || get(addr, "/pipe")))
        .collect();
    for request in asking {
        let status = request.join().expect("request thread");
        assert!(status == 403 || status == 404, "status {status}");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(get(addr, "/hello.txt"), 200, "static serving still works");
}

#[cfg(feature = "static-files")]
fn is_fifo(path: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    fs::metadata(path).is_ok_and(|meta| meta.file_type().is_fifo())
}

// ---------------------------------------------------------------------------
// 10. /stats and the token; the auth scheme's case.
// ---------------------------------------------------------------------------

#[test]
fn stats_needs_the_token_and_bearer_is_case_insensitive() {
    let dir = TempDir::new("token");
    let token_file = dir.join("token");
    fs::write(&token_file, "s3cret\n").expect("write token");
    let token_path = token_file.to_str().expect("UTF-8 path");
    let (_server, addr) = start_server("server", &["server", "--token-file", token_path, "-q"]);

    let stats = |extra: &str| {
        let request = format!("GET /stats HTTP/1.1\r\nHost: {addr}\r\n{extra}\r\n");
        exchange(addr, &request)
    };
    let (head, body) = stats("");
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
    assert!(!body.contains("clients"), "{body}");
    let (head, body) = stats("Authorization: Bearer s3cret\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(body.contains("\"clients\""), "{body}");
    assert_eq!(
        get(addr, "/stats?token=s3cret"),
        200,
        "the query form works too"
    );
    let (head, _) = stats("Authorization: bearer s3cret\r\n");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");

    let host = addr.to_string();
    let lower = upgrade_request(&host, "Authorization: bearer s3cret\r\n");
    let (head, _) = exchange(addr, &lower);
    assert!(head.starts_with("HTTP/1.1 101"), "lowercase bearer: {head}");
    let wrong = upgrade_request(&host, "Authorization: bearer nope\r\n");
    let (head, _) = exchange(addr, &wrong);
    assert!(head.starts_with("HTTP/1.1 401"), "{head}");
}
