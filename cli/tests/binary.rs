//! The `wsloop` binary end to end: real server and client processes talking
//! over real sockets on 127.0.0.1, plus raw WebSocket and HTTP peers.
//!
//! Every wait is bounded: child output is read on threads and handed over
//! channels (`recv_timeout`), and every child is killed and reaped on drop.

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

mod common;

use common::process::{replies, start_server, Finished, Proc, RECEIVED};

/// Runs `wsloop client --address ADDR ARGS` to completion (bounded).
fn run_client(args: &[&str], addr: SocketAddr, input: Option<&str>, secs: u64) -> Finished {
    let addr = addr.to_string();
    let mut all = args.to_vec();
    all.extend(["--address", &addr]);
    Proc::wsloop("client", &all, input).finish(secs)
}

/// Asserts the client saw exactly the replies to `commands`, in order, with
/// request IDs 1, 2, ...
fn assert_replies(run: &Finished, commands: &[&str]) {
    assert!(run.status.success(), "client failed: {run:#?}");
    check_replies(&replies(&run.stdout), commands, run);
}

/// Like [`assert_replies`], in any order: the client prints each reply as
/// its request's task sees it, so requests sent back to back may print in
/// either order.
fn assert_replies_any_order(run: &Finished, commands: &[&str]) {
    assert!(run.status.success(), "client failed: {run:#?}");
    let mut replies = replies(&run.stdout);
    replies.sort_by_key(|reply| reply["requestID"].as_u64());
    check_replies(&replies, commands, run);
}

/// Reply `i` answers `commands[i]` under request ID `i + 1`.
fn check_replies(replies: &[serde_json::Value], commands: &[&str], run: &Finished) {
    assert_eq!(replies.len(), commands.len(), "reply count: {run:#?}");
    for (i, (reply, command)) in replies.iter().zip(commands).enumerate() {
        assert_eq!(reply["requestID"], i as u64 + 1, "reply {i}: {reply}");
        assert_eq!(reply["success"], true, "reply {i}: {reply}");
        assert_eq!(
            reply["someOtherThing"],
            format!("Command '{command}' processed successfully."),
            "reply {i}: {reply}"
        );
    }
}

const HOT_DOGS: [&str; 3] = [
    "Eject the hot dog 1.",
    "Eject the hot dog 2.",
    "Eject the hot dog 3.",
];

// ---------------------------------------------------------------------------
// Client and server together.
// ---------------------------------------------------------------------------

#[test]
fn client_and_server_binaries_talk() {
    let (mut server, addr) = start_server("server", &["server"]);
    let run = run_client(
        &["client", "--count", "3", "--interval", "0.05"],
        addr,
        None,
        10,
    );
    assert_replies(&run, &HOT_DOGS);
    // The server is unharmed by the client leaving.
    server.sigterm();
    let stopped = server.finish(10);
    assert!(stopped.stopped_by_sigterm(), "server: {stopped:#?}");
}

#[test]
fn mode_flag_spelling_works() {
    let (_server, addr) = start_server("server", &["--mode", "server"]);
    let run = run_client(
        &["--mode", "client", "--count", "3", "--interval", "0.05"],
        addr,
        None,
        10,
    );
    assert_replies(&run, &HOT_DOGS);
}

#[test]
fn stdin_mode_sends_one_request_per_line() {
    let (_server, addr) = start_server("server", &["server"]);
    let run = run_client(&["client", "--stdin"], addr, Some("alpha\nbeta\n"), 10);
    assert_replies_any_order(&run, &["alpha", "beta"]);
}

/// A port that was just free: nothing listens there now.
fn free_port_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr")
}

#[test]
fn client_without_reconnect_fails_fast_when_server_unreachable() {
    let addr = free_port_addr();
    let started = Instant::now();
    let run = run_client(&["client", "--count", "1", "--no-reconnect"], addr, None, 5);
    assert_eq!(
        run.status.code(),
        Some(1),
        "unreachable is exit 1: {run:#?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(run.stderr.len(), 1, "stderr should be one line: {run:#?}");
    assert!(run.stderr[0].starts_with("wsloop:"), "{run:#?}");
    assert!(replies(&run.stdout).is_empty(), "{run:#?}");
}

#[test]
fn client_gives_up_at_start_after_max_attempts() {
    let addr = free_port_addr();
    let args = [
        "client",
        "--count",
        "1",
        "--reconnect-delay",
        "10ms",
        "--max-attempts",
        "3",
    ];
    let run = run_client(&args, addr, None, 10);
    assert_eq!(
        run.status.code(),
        Some(1),
        "unreachable is exit 1: {run:#?}"
    );
    let retries = run
        .stderr
        .iter()
        .filter(|l| l.contains("connect attempt"))
        .count();
    assert_eq!(
        retries, 1,
        "attempt 2 is logged, 3 is the verdict: {run:#?}"
    );
    let last = run.stderr.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.contains("gave up connecting after 3 attempts"),
        "client's last stderr line: {run:#?}"
    );
    assert!(replies(&run.stdout).is_empty(), "{run:#?}");
}

#[test]
fn client_without_reconnect_fails_when_server_goes_away() {
    let (mut server, addr) = start_server("server", &["server"]);
    let addr = addr.to_string();
    let mut client = Proc::wsloop(
        "client",
        &[
            "client",
            "--address",
            &addr,
            "--interval",
            "0.05",
            "--no-reconnect",
        ],
        None,
    );
    client.wait_for_line(10, "the first reply", |l| l.starts_with(RECEIVED));

    server.sigterm();
    let run = client.finish(5);
    assert!(
        !run.status.success(),
        "client must fail when the server leaves: {run:#?}"
    );
    let last = run.stderr.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.starts_with("wsloop:") && last.contains("connection ended unexpectedly"),
        "client's last stderr line: {run:#?}"
    );

    let stopped = server.finish(5);
    assert!(stopped.stopped_by_sigterm(), "server: {stopped:#?}");
}

#[test]
fn client_gives_up_after_max_attempts_when_server_stays_away() {
    let (mut server, addr) = start_server("server", &["server"]);
    let addr = addr.to_string();
    let args = [
        "client",
        "--address",
        &addr,
        "--interval",
        "0.05",
        "--reconnect-delay",
        "50ms",
        "--max-attempts",
        "3",
    ];
    let mut client = Proc::wsloop("client", &args, None);
    client.wait_for_line(10, "the first reply", |l| l.starts_with(RECEIVED));

    server.sigterm();
    let stopped = server.finish(5);
    assert!(stopped.stopped_by_sigterm(), "server: {stopped:#?}");
    let run = client.finish(10);
    assert!(!run.status.success(), "client must give up: {run:#?}");
    let attempts = run
        .stderr
        .iter()
        .filter(|l| l.contains("reconnect attempt"))
        .count();
    assert!(attempts >= 2, "each failed attempt is logged: {run:#?}");
    let last = run.stderr.last().map(String::as_str).unwrap_or_default();
    assert!(
        last.starts_with("wsloop:") && last.contains("gave up reconnecting after 3 attempts"),
        "client's last stderr line: {run:#?}"
    );
}

/// Only with the `signals` feature; without it SIGTERM ends the server at
/// once, as for any program without handlers.
#[cfg(feature = "signals")]
#[test]
fn server_sigterm_sends_close_1001() {
    use async_tungstenite::tungstenite::Message as Frame;
    use futures_lite::StreamExt;
    let (mut server, addr) = start_server("server", &["server"]);
    let code = smol::block_on(wsloop::timeout(Duration::from_secs(10), async {
        let stream = smol::net::TcpStream::connect(addr)
            .await
            .expect("tcp connect to the server");
        let (mut ws, _) = async_tungstenite::client_async(format!("ws://{addr}/server"), stream)
            .await
            .expect("websocket handshake");
        // One round trip proves the server's loop for this connection runs
        // (so the connection is registered for the shutdown close).
        ws.send(Frame::text(
            r#"{"requestID":7,"command":"ping"}"#.to_string(),
        ))
        .await
        .expect("send a request");
        loop {
            match ws.next().await {
                Some(Ok(Frame::Text(text))) => {
                    assert!(
                        text.contains("Command 'ping' processed successfully."),
                        "{text}"
                    );
                    break;
                }
                Some(Ok(_)) => continue,
                other => panic!("expected a reply, got {other:?}"),
            }
        }

        server.sigterm();
        let code = loop {
            match ws.next().await {
                Some(Ok(Frame::Close(Some(frame)))) => break u16::from(frame.code),
                Some(Ok(Frame::Close(None))) => panic!("Close frame without a code"),
                Some(Ok(_)) => continue,
                other => panic!("connection ended without a Close frame: {other:?}"),
            }
        };
        // Keep reading so our Close reply is flushed, until the stream ends.
        while ws.next().await.is_some() {}
        code
    }))
    .expect("test did not finish within 10 s");
    assert_eq!(code, 1001, "close code on shutdown");
    let stopped = server.finish(5);
    assert!(stopped.stopped_by_sigterm(), "server: {stopped:#?}");
}

// ---------------------------------------------------------------------------
// Command line.
// ---------------------------------------------------------------------------

#[test]
fn help_lists_every_option() {
    let run = Proc::wsloop("help", &["--help"], None).finish(5);
    assert!(run.status.success(), "{run:#?}");
    let help = run.stdout.join("\n");
    for needle in [
        "--address",
        "--heartbeat",
        "--interval",
        "--count",
        "--stdin",
        " -q",
        " -v",
        "127.0.0.1:8080",
        "[default: 2s]",
        "--max-connections",
        "--allow-origin",
        "--token-file",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
    // Each feature's options are there exactly when the build has it.
    for (on, needle) in [
        (cfg!(feature = "static-files"), "--www"),
        (cfg!(feature = "console"), "--console"),
        (cfg!(feature = "urls"), "ws://HOST[:PORT][/PATH]"),
        (cfg!(feature = "headers"), "--header"),
        (cfg!(feature = "client-id"), "--id NAME"),
        (cfg!(feature = "tls"), "--ca"),
        (cfg!(feature = "tls"), "--cert"),
        (cfg!(feature = "proxy"), "--proxy"),
        (cfg!(feature = "metrics"), "--public-metrics"),
        (cfg!(feature = "trusted-proxy"), "--trusted-proxy"),
        (cfg!(feature = "forwarder"), "--operator-token-file"),
        (cfg!(feature = "redis"), "--node-id"),
        (cfg!(feature = "exec"), "--exec-timeout"),
        (cfg!(feature = "json-logs"), "text|json"),
    ] {
        assert_eq!(help.contains(needle), on, "{needle:?} in --help:\n{help}");
    }
}

#[test]
fn bad_option_is_a_one_line_error() {
    let run = Proc::wsloop("server", &["server", "--heartbeat", "0.1"], None).finish(5);
    assert_eq!(run.status.code(), Some(2), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
    let first = run.stderr.first().map(String::as_str).unwrap_or_default();
    assert!(
        first.starts_with("wsloop:") && first.contains("heartbeat"),
        "{run:#?}"
    );
    // The error itself is one line; at most a pointer to --help follows.
    assert!(run.stderr.len() <= 2, "{run:#?}");
    assert!(
        run.stderr.iter().skip(1).all(|l| l.contains("--help")),
        "{run:#?}"
    );
}

/// Runs `wsloop ARGS`, which names an option this build left out, and
/// checks it is refused with a one-line reason rather than ignored.
#[cfg_attr(
    all(
        feature = "static-files",
        feature = "console",
        feature = "urls",
        feature = "headers",
        feature = "client-id"
    ),
    allow(dead_code)
)]
fn assert_refused(args: &[&str], feature: &str) {
    let run = Proc::wsloop("server", args, None).finish(5);
    assert_eq!(run.status.code(), Some(2), "{run:#?}");
    let first = run.stderr.first().map(String::as_str).unwrap_or_default();
    let reason = format!("needs the `{feature}` Cargo feature");
    assert!(first.contains(&reason), "{run:#?}");
}

#[cfg(not(feature = "static-files"))]
#[test]
fn www_is_refused_without_static_files() {
    assert_refused(&["server", "--www", "."], "static-files");
}

#[cfg(not(feature = "console"))]
#[test]
fn console_is_refused_without_the_console_feature() {
    assert_refused(&["server", "--console"], "console");
}

#[cfg(not(feature = "urls"))]
#[test]
fn a_url_is_refused_without_the_urls_feature() {
    let url = "ws://127.0.0.1:9/server";
    assert_refused(&["client", "--address", url], "urls");
}

#[cfg(not(feature = "headers"))]
#[test]
fn header_is_refused_without_the_headers_feature() {
    assert_refused(&["client", "--header", "X-Route: b"], "headers");
}

#[cfg(not(feature = "client-id"))]
#[test]
fn id_is_refused_without_the_client_id_feature() {
    assert_refused(&["client", "--id", "pump-7"], "client-id");
}

// ---------------------------------------------------------------------------
// Static files.
// ---------------------------------------------------------------------------

/// Only with the `static-files` feature (the small build refuses `--www`,
/// see `www_is_refused_without_static_files`).
#[cfg(feature = "static-files")]
mod static_files {
    use super::*;
    use common::fs::TempDir;
    use common::http::{exchange, Answer};

    /// One HTTP/1.1 GET over a raw socket, read to the server's close.
    fn http_get(addr: SocketAddr, target: &str) -> Answer {
        let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        exchange(addr, request.as_bytes(), 5)
    }

    #[test]
    fn www_dir_is_served() {
        let www = TempDir::new("www");
        std::fs::write(www.join("index.html"), "hello wsloop").expect("write index.html");
        std::fs::write(www.join("style.css"), "body { color: red }").expect("write style.css");
        let (_server, addr) = start_server("server", &["server", "--www", www.arg()]);

        let answer = http_get(addr, "/");
        assert_eq!(answer.status, 200, "GET / {}", answer.head);
        assert_eq!(answer.body, b"hello wsloop");
        let html = answer.header("content-type").unwrap_or_default();
        assert!(html.starts_with("text/html"), "GET / Content-Type {html:?}");

        let answer = http_get(addr, "/style.css");
        assert_eq!(answer.status, 200, "GET /style.css {}", answer.head);
        assert_eq!(answer.body, b"body { color: red }");
        let css = answer.header("content-type").unwrap_or_default();
        assert!(
            css.starts_with("text/css"),
            "GET /style.css Content-Type {css:?}"
        );

        assert_eq!(http_get(addr, "/missing").status, 404, "GET /missing");
    }

    #[test]
    fn dotfiles_in_www_are_not_found() {
        // A checkout served as it is: its `.git` and `.env` stay private.
        let www = TempDir::new("www-dot");
        std::fs::create_dir_all(www.join(".git")).expect("mkdir .git");
        std::fs::create_dir_all(www.join("app/.secret")).expect("mkdir .secret");
        std::fs::write(www.join(".git/config"), "[core]").expect("write config");
        std::fs::write(www.join(".env"), "TOKEN=x").expect("write .env");
        std::fs::write(www.join("app/.secret/key"), "k").expect("write key");
        std::fs::write(www.join("app/index.html"), "app").expect("write index");
        std::fs::create_dir_all(www.join(".well-known/acme-challenge")).expect("mkdir acme");
        std::fs::create_dir_all(www.join("app/.well-known")).expect("mkdir app acme");
        let token = www.join(".well-known/acme-challenge/t0ken");
        std::fs::write(token, "t0ken.thumbprint").expect("write token");
        std::fs::write(www.join(".well-known/.env"), "TOKEN=y").expect("write .env");
        std::fs::write(www.join("app/.well-known/x"), "x").expect("write x");
        #[cfg(unix)]
        std::os::unix::fs::symlink(".git", www.join("docs")).expect("symlink docs");
        let (_server, addr) = start_server("server", &["server", "--www", www.arg()]);

        for target in [
            "/.env",
            "/.git/config",
            "/.git/",
            "/.git",
            "/%2egit/config",
            "/app/.secret/key",
            "/app/%2Esecret/key",
            "/app/.secret",
            "/docs/config",
        ] {
            let answer = http_get(addr, target);
            assert_eq!(answer.status, 404, "GET {target}: {}", answer.head);
            assert!(!answer.text().contains("TOKEN"), "GET {target}");
        }
        // Dots elsewhere in a name are ordinary, and `.` segments still work.
        assert_eq!(http_get(addr, "/app/./index.html").status, 200);
        // `/.well-known/` is served (ACME http-01 challenges live there),
        // at the top only, and its own dotfiles are not.
        let answer = http_get(addr, "/.well-known/acme-challenge/t0ken");
        assert_eq!(answer.status, 200, "{}", answer.head);
        assert_eq!(answer.text(), "t0ken.thumbprint");
        for target in ["/.well-known/.env", "/app/.well-known/x"] {
            assert_eq!(http_get(addr, target).status, 404, "GET {target}");
        }
        assert_eq!(http_get(addr, "/app/index.html").status, 200);
    }

    #[test]
    fn the_directory_redirect_keeps_the_query() {
        let www = TempDir::new("www-redirect");
        std::fs::create_dir_all(www.join("app")).expect("mkdir app");
        std::fs::write(www.join("app/index.html"), "app").expect("write index");
        let (_server, addr) = start_server("server", &["server", "--www", www.arg()]);

        let answer = http_get(addr, "/app?room=1&x=%20");
        assert_eq!(answer.status, 301, "{}", answer.head);
        assert_eq!(answer.header("location"), Some("/app/?room=1&x=%20"));
        let answer = http_get(addr, "/app");
        assert_eq!(
            answer.header("location"),
            Some("/app/"),
            "no `?` without a query"
        );
        let answer = http_get(addr, "/app?");
        assert_eq!(
            answer.header("location"),
            Some("/app/?"),
            "an empty query kept as sent"
        );
    }
}
