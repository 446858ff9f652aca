//! The command forwarder against the real binary: named devices (here
//! raw WebSocket peers written in the test, tungstenite's own client),
//! commands sent through the operator API with plain HTTP over TCP,
//! `kill -9` and restarts with `--state`, and every refusal of the API.
#![cfg(feature = "forwarder")]

use std::io::Write;
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use async_tungstenite::tungstenite::Message as Frame;
use futures_lite::StreamExt;
use futures_sink::Sink;
use serde_json::{json, Value};

mod common;

use common::fs::TempDir;
use common::process::{start_server, Proc};
use common::{bounded, next_close_code, Ws};
use wsloop::Message;

/// The operator token every test's server runs with.
const OPERATOR: &str = "op-secret";

/// A fresh directory of the test's own, for token files and `--state`.
fn scratch(name: &str) -> TempDir {
    TempDir::new(&format!("forwarder-{name}"))
}

/// Writes `text` to `dir/file` and returns its path as a string.
fn file(dir: &std::path::Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write file");
    path.to_string_lossy().into_owned()
}

/// Starts `wsloop server` with the operator token, the device tokens of
/// `tokens` (`NAME TOKEN` lines) and `extra` arguments.
fn server(dir: &std::path::Path, tokens: &str, extra: &[&str]) -> (Proc, SocketAddr) {
    let operator = file(dir, "operator", OPERATOR);
    let tokens = file(dir, "tokens", tokens);
    let mut args = vec![
        "server",
        "--operator-token-file",
        &operator,
        "--tokens",
        &tokens,
    ];
    args.extend_from_slice(extra);
    start_server("server", &args)
}

/// One HTTP request to the API, answered and closed by the server: its
/// status and JSON body.
fn api_raw(addr: SocketAddr, head: &str, body: &[u8]) -> (u16, Value) {
    let request = [head.as_bytes(), body].concat();
    let answer = common::http::exchange(addr, &request, 70);
    (answer.status, answer.json())
}

/// `METHOD target` with the operator token and `body` (if any) as JSON.
fn api(addr: SocketAddr, method: &str, target: &str, body: Option<Value>) -> (u16, Value) {
    common::http::api(addr, OPERATOR, method, target, body)
}

/// Queues `command` for `name`; returns the status and body.
fn send(addr: SocketAddr, name: &str, command: &str, query: &str) -> (u16, Value) {
    let target = format!("/api/clients/{name}/commands{query}");
    api(addr, "POST", &target, Some(json!({ "command": command })))
}

/// [`send`] with `?wait=10s` on a thread of its own, so that the test's
/// device can answer meanwhile; join it for the answer.
fn send_waiting(
    addr: SocketAddr,
    name: &str,
    command: &str,
) -> std::thread::JoinHandle<(u16, Value)> {
    let (name, command) = (name.to_string(), command.to_string());
    std::thread::spawn(move || send(addr, &name, &command, "?wait=10s"))
}

/// Joins a [`send_waiting`] and checks it came back 200 with the final record.
fn replied_in_time(waiting: std::thread::JoinHandle<(u16, Value)>) -> Value {
    let (status, body) = waiting.join().expect("API thread");
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "replied", "{body}");
    body
}

/// The requestID in an API answer.
fn id_of(body: &Value) -> i64 {
    body["requestID"]
        .as_i64()
        .unwrap_or_else(|| panic!("no requestID in {body}"))
}

/// The record of `name`'s command `id`.
fn record(addr: SocketAddr, name: &str, id: i64) -> Value {
    let (status, body) = api(
        addr,
        "GET",
        &format!("/api/clients/{name}/commands/{id}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    body
}

/// A device: a WebSocket to `/server?client=NAME&token=TOKEN`.
async fn device(addr: SocketAddr, name: &str, token: &str) -> Ws {
    try_device(addr, &format!("client={name}&token={token}"))
        .await
        .unwrap_or_else(|status| panic!("device {name} refused with {status}"))
}

/// The upgrade with `query`, or the HTTP status that refused it.
async fn try_device(addr: SocketAddr, query: &str) -> Result<Ws, u16> {
    let stream = smol::net::TcpStream::connect(addr)
        .await
        .expect("tcp connect");
    let url = format!("ws://{addr}/server?{query}");
    match async_tungstenite::client_async(url, stream).await {
        Ok((ws, _)) => Ok(ws),
        Err(async_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(err) => panic!("handshake failed: {err}"),
    }
}

/// The next command the device receives.
async fn next_command(ws: &mut Ws) -> Message {
    loop {
        match ws.next().await {
            Some(Ok(Frame::Text(text))) => {
                return wsloop::decode(text.as_bytes()).expect("command decodes")
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a command, got {other:?}"),
        }
    }
}

/// Answers `command` as the article's client does.
async fn reply(ws: &mut Ws, command: &Message) {
    let text = wsloop::encode(&command.seed_reply());
    futures_lite::future::poll_fn(|cx| std::pin::Pin::new(&mut *ws).poll_ready(cx))
        .await
        .expect("ready");
    std::pin::Pin::new(&mut *ws)
        .start_send(Frame::text(text))
        .expect("send reply");
    futures_lite::future::poll_fn(|cx| std::pin::Pin::new(&mut *ws).poll_flush(cx))
        .await
        .expect("flush reply");
}

#[test]
fn a_command_for_an_offline_device_is_delivered_once_when_it_connects() {
    let dir = scratch("offline");
    let (_server, addr) = server(&dir, "dev-1 t1\n", &[]);
    // Known from --tokens, never connected: queued.
    let (status, body) = send(addr, "dev-1", "reboot", "");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "queued");
    // Without --state, ids start at the server's start time (see MemoryStore).
    let id = id_of(&body);
    bounded(20, async {
        let mut ws = device(addr, "dev-1", "t1").await;
        let command = next_command(&mut ws).await;
        assert_eq!(
            (command.request_id, command.command.as_str()),
            (id, "reboot")
        );
        reply(&mut ws, &command).await;
        // Connected now: the next command goes out at once ("sent"), and
        // it is the next thing the device sees, so #1 was not sent twice.
        let waiting = send_waiting(addr, "dev-1", "status");
        let second = next_command(&mut ws).await;
        assert_eq!(second.request_id, id + 1);
        reply(&mut ws, &second).await;
        replied_in_time(waiting);
    });
    let first = record(addr, "dev-1", id);
    assert_eq!(first["status"], "replied", "{first}");
    assert_eq!(
        first["reply"]["someOtherThing"],
        "Command 'reboot' processed successfully."
    );
    assert!(first["sent_at"].is_u64() && first["finished_at"].is_u64());
    let (_, clients) = api(addr, "GET", "/api/clients", None);
    assert_eq!(clients["clients"][0]["name"], "dev-1", "{clients}");
    assert_eq!(clients["clients"][0]["queued"], 0, "{clients}");
}

#[test]
fn kill_9_between_acknowledgement_and_delivery_loses_and_doubles_nothing() {
    let dir = scratch("kill9");
    let state = dir.join("state").to_string_lossy().into_owned();
    let (server1, addr) = server(&dir, "dev-1 t1\n", &["--state", &state]);
    for (n, command) in ["one", "two"].iter().enumerate() {
        let (status, body) = send(addr, "dev-1", command, "");
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["requestID"], n as i64 + 1);
    }
    // Dropping the process kills it with SIGKILL.
    drop(server1);
    let (_server2, addr) = server(&dir, "dev-1 t1\n", &["--state", &state]);
    bounded(20, async {
        let mut ws = device(addr, "dev-1", "t1").await;
        for (id, text) in [(1, "one"), (2, "two")] {
            let command = next_command(&mut ws).await;
            assert_eq!((command.request_id, command.command.as_str()), (id, text));
            reply(&mut ws, &command).await;
        }
        // The counter survived: the next id is 3, never a repeat, and it
        // is the next message (nothing was delivered twice).
        let waiting = send_waiting(addr, "dev-1", "three");
        let third = next_command(&mut ws).await;
        assert_eq!(third.request_id, 3);
        reply(&mut ws, &third).await;
        assert_eq!(replied_in_time(waiting)["requestID"], 3);
    });
    for id in 1..=2 {
        assert_eq!(record(addr, "dev-1", id)["status"], "replied");
    }
}

#[test]
fn wait_gives_up_with_202_and_a_late_reply_still_completes_the_record() {
    let dir = scratch("late");
    let (_server, addr) = server(&dir, "dev-1 t1\n", &["--request-timeout", "1s"]);
    let id = bounded(30, async {
        let mut ws = device(addr, "dev-1", "t1").await;
        let (status, body) = send(addr, "dev-1", "slow", "?wait=1500ms");
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["status"], "sent");
        let command = next_command(&mut ws).await;
        assert_eq!(command.request_id, id_of(&body));
        // Past the waiting caller and the session's request timeout.
        async_io::Timer::after(Duration::from_millis(1200)).await;
        reply(&mut ws, &command).await;
        // A second command proves the reply has been read.
        let waiting = send_waiting(addr, "dev-1", "after");
        let second = next_command(&mut ws).await;
        reply(&mut ws, &second).await;
        replied_in_time(waiting);
        command.request_id
    });
    assert_eq!(record(addr, "dev-1", id)["status"], "replied");
}

#[test]
fn a_reply_marked_interrupted_ends_interrupted() {
    let dir = scratch("interrupted");
    let (_server, addr) = server(&dir, "dev-1 t1\n", &[]);
    let id = bounded(20, async {
        let mut ws = device(addr, "dev-1", "t1").await;
        let (status, _) = send(addr, "dev-1", "upgrade", "");
        assert_eq!(status, 202);
        let command = next_command(&mut ws).await;
        let interrupted = json!({
            "requestID": command.request_id, "command": "",
            "someOtherThing": "interrupted: device restarted", "success": false
        });
        ws.send_text(interrupted.to_string()).await;
        let waiting = send_waiting(addr, "dev-1", "after");
        let second = next_command(&mut ws).await;
        reply(&mut ws, &second).await;
        replied_in_time(waiting);
        command.request_id
    });
    assert_eq!(record(addr, "dev-1", id)["status"], "interrupted");
}

/// Sends a text frame (the tests' devices answer by hand sometimes).
trait SendText {
    async fn send_text(&mut self, text: String);
}

impl SendText for Ws {
    async fn send_text(&mut self, text: String) {
        use futures_lite::future::poll_fn;
        use std::pin::Pin;
        poll_fn(|cx| Pin::new(&mut *self).poll_ready(cx))
            .await
            .expect("ready");
        Pin::new(&mut *self)
            .start_send(Frame::text(text))
            .expect("send");
        poll_fn(|cx| Pin::new(&mut *self).poll_flush(cx))
            .await
            .expect("flush");
    }
}

#[test]
fn a_newer_connection_takes_the_name_and_its_unanswered_commands() {
    let dir = scratch("replace");
    let (_server, addr) = server(&dir, "dev-1 t1\n", &[]);
    let id = bounded(20, async {
        let mut old = device(addr, "dev-1", "t1").await;
        let (status, _) = send(addr, "dev-1", "job", "");
        assert_eq!(status, 202);
        let unanswered = next_command(&mut old).await;
        let mut new = device(addr, "dev-1", "t1").await;
        assert_eq!(next_close_code(&mut old).await, Some(4000));
        // The command the old connection never answered moves here, same id.
        let moved = next_command(&mut new).await;
        assert_eq!(moved.request_id, unanswered.request_id);
        reply(&mut new, &moved).await;
        let waiting = send_waiting(addr, "dev-1", "after");
        let second = next_command(&mut new).await;
        reply(&mut new, &second).await;
        replied_in_time(waiting);
        moved.request_id
    });
    assert_eq!(record(addr, "dev-1", id)["status"], "replied");
}

#[test]
fn names_and_tokens_are_checked_on_the_upgrade() {
    let dir = scratch("tokens");
    let (_server, addr) = server(&dir, "dev-1 t1\ndev-2 t2\n", &[]);
    bounded(20, async {
        // Another device's token does not prove this name.
        assert_eq!(
            try_device(addr, "client=dev-1&token=t2").await.err(),
            Some(403)
        );
        assert_eq!(try_device(addr, "client=dev-1").await.err(), Some(401));
        assert_eq!(
            try_device(addr, "client=nobody&token=t1").await.err(),
            Some(403)
        );
        assert_eq!(
            try_device(addr, "client=bad%20name&token=t1").await.err(),
            Some(400)
        );
        assert_eq!(try_device(addr, "client=&token=t1").await.err(), Some(400));
        let long = "a".repeat(65);
        let query = format!("client={long}&token=t1");
        assert_eq!(try_device(addr, &query).await.err(), Some(400));
        assert!(try_device(addr, "client=dev-2&token=t2").await.is_ok());
        // Anonymous connections behave as before: the seed's reply.
        let mut anonymous = try_device(addr, "").await.expect("anonymous");
        anonymous
            .send_text(wsloop::encode(&Message::request(5, "hi")))
            .await;
        let answer = next_command(&mut anonymous).await;
        assert_eq!(
            answer.some_other_thing,
            "Command 'hi' processed successfully."
        );
    });
}

#[test]
fn the_api_refuses_bad_input_with_4xx_and_a_reason() {
    let dir = scratch("refusals");
    let (_server, addr) = server(&dir, "dev-1 t1\n", &["--max-queued", "2"]);
    let error = |(status, body): (u16, Value)| {
        assert!(body["error"].is_string(), "{status}: {body}");
        status
    };
    let post = |target: &str, body: &str| {
        let head = format!(
            "POST {target} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {OPERATOR}\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        );
        api_raw(addr, &head, body.as_bytes())
    };
    let commands = "/api/clients/dev-1/commands";
    // Authorisation first: none, wrong, a device's token.
    let unauthenticated = format!("GET /api/clients HTTP/1.1\r\nHost: {addr}\r\n\r\n");
    assert_eq!(error(api_raw(addr, &unauthenticated, b"")), 401);
    for token in ["wrong", "t1"] {
        let head = format!(
            "GET /api/clients HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\n\r\n"
        );
        assert_eq!(error(api_raw(addr, &head, b"")), 403);
    }
    assert_eq!(error(post(commands, "{\"command\":")), 400);
    assert_eq!(error(post(commands, "{\"other\":\"x\"}")), 400);
    assert_eq!(error(post(commands, "{\"command\":\"\"}")), 400);
    let huge = format!("{{\"command\":\"{}\"}}", "x".repeat(64 * 1024));
    assert_eq!(error(post(commands, &huge)), 413);
    let chunked = format!(
        "POST {commands} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {OPERATOR}\r\n\
         Transfer-Encoding: chunked\r\n\r\n"
    );
    assert_eq!(error(api_raw(addr, &chunked, b"0\r\n\r\n")), 411);
    assert_eq!(error(api(addr, "GET", "/api/nothing", None)), 404);
    assert_eq!(error(send(addr, "nobody", "x", "")), 404);
    assert_eq!(error(api(addr, "DELETE", "/api/clients", None)), 405);
    assert_eq!(error(api(addr, "GET", commands, None)), 405);
    assert_eq!(error(api(addr, "GET", "/api/broadcast", None)), 405);
    assert_eq!(error(send(addr, "dev-1", "x", "?wait=61s")), 400);
    assert_eq!(
        error(api(addr, "GET", &format!("{commands}/99"), None)),
        404
    );
    // Two fit in the queue, the third is refused.
    let (status, a) = send(addr, "dev-1", "a", "");
    assert_eq!(status, 202);
    let (status, b) = send(addr, "dev-1", "b", "");
    assert_eq!(status, 202);
    assert_eq!(error(send(addr, "dev-1", "c", "")), 429);
    // A queued command can be cancelled, once.
    let first = format!("{commands}/{}", id_of(&a));
    let (status, cancelled) = api(addr, "DELETE", &first, None);
    assert_eq!((status, &cancelled["status"]), (200, &json!("cancelled")));
    assert_eq!(error(api(addr, "DELETE", &first, None)), 409);
    // A sent one cannot.
    bounded(20, async {
        let mut ws = device(addr, "dev-1", "t1").await;
        let command = next_command(&mut ws).await;
        assert_eq!(command.request_id, id_of(&b));
        let target = format!("{commands}/{}", id_of(&b));
        assert_eq!(error(api(addr, "DELETE", &target, None)), 409);
        reply(&mut ws, &command).await;
    });
}

#[test]
fn the_api_is_off_without_an_operator_token_and_broadcast_reaches_named_clients() {
    let (_plain, plain) = start_server("plain", &["server"]);
    assert_eq!(api(plain, "GET", "/api/clients", None).0, 404);

    let dir = scratch("broadcast");
    let (_server, addr) = server(&dir, "dev-1 t1\ndev-2 t2\n", &[]);
    bounded(20, async {
        let mut one = device(addr, "dev-1", "t1").await;
        let mut two = device(addr, "dev-2", "t2").await;
        // The server registers a device just after its 101 goes out.
        common::wait_until(10, "both devices listed as connected", || {
            let (_, list) = api(addr, "GET", "/api/clients", None);
            let connected = list["clients"]
                .as_array()
                .map(|clients| clients.iter().filter(|c| c["connected"] == true).count());
            connected == Some(2)
        });
        let (status, body) = api(
            addr,
            "POST",
            "/api/broadcast",
            Some(json!({"command": "all"})),
        );
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["commands"].as_array().map(Vec::len), Some(2), "{body}");
        for ws in [&mut one, &mut two] {
            let command = next_command(ws).await;
            assert_eq!(command.command, "all");
            reply(ws, &command).await;
        }
    });
}

#[test]
fn a_command_past_its_time_to_live_ends_expired() {
    let dir = scratch("ttl");
    let (_server, addr) = server(&dir, "dev-1 t1\n", &["--command-ttl", "1s"]);
    let (status, body) = send(addr, "dev-1", "late", "");
    assert_eq!(status, 202);
    common::wait_until(10, "the command to expire", || {
        record(addr, "dev-1", id_of(&body))["status"] == "expired"
    });
}

/// The status line's code of a raw upgrade of `/server?query` (no
/// WebSocket client in between, so nothing re-encodes the query).
fn upgrade_status(addr: SocketAddr, query: &str) -> u16 {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("read timeout");
    let request = format!(
        "GET /server?{query} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\n\
         Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
         Sec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).expect("send upgrade");
    let head = common::read_head(&mut stream);
    head.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"))
}

#[test]
fn a_badly_encoded_or_bare_parameter_is_refused_not_ignored() {
    // Found by the outside check: `?client=%zz` (an escape that is not
    // hex) and a bare `?client` were read as "no name" and the connection
    // went through as anonymous (101), where `?client=` gets 400; likewise
    // `?wait=%zz` was no wait at all (202) where `?wait=abc` gets 400.
    let dir = scratch("encoding");
    let (_server, addr) = server(&dir, "dev-1 t1\n", &[]);
    for query in [
        "client=%zz&token=t1",
        "client=dev-1%&token=t1",
        "client&token=t1",
    ] {
        assert_eq!(upgrade_status(addr, query), 400, "?{query}");
    }
    // The same name, well encoded, still proves itself.
    assert_eq!(upgrade_status(addr, "client=dev%2D1&token=t1"), 101);
    for wait in ["?wait=%zz", "?wait"] {
        let (status, body) = send(addr, "dev-1", "x", wait);
        assert_eq!(status, 400, "{wait}: {body}");
    }
}

#[cfg(feature = "console")]
#[test]
fn the_console_prints_a_named_clients_reply_escaped() {
    // Found by the outside check: `@NAME command` printed the device's
    // `someOtherThing` as it came, so a device could write ANSI escapes
    // and whole forged lines into the operator's console (the broadcast
    // path prints each reply as JSON, escaped).
    let dir = scratch("console");
    let tokens = file(&dir, "tokens", "dev-1 t1\n");
    let args = [
        "server",
        "--console",
        "--tokens",
        &tokens,
        "--address",
        "127.0.0.1:0",
    ];
    let mut server = Proc::wsloop("server", &args, Some("@dev-1 hello\n"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let first = server
        .next_line(deadline)
        .unwrap_or_else(|| server.fail("exited before announcing its address"));
    let addr = common::process::announced_addr(&first)
        .unwrap_or_else(|| panic!("unexpected first line {first:?}"));
    server.wait_for_line(10, "the command queued", |line| {
        line.starts_with("console: dev-1 #")
    });
    let forged = "\u{1b}[2K\rclient dev-2 #7 replied: forged";
    bounded(20, async {
        let mut ws = device(addr, "dev-1", "t1").await;
        let command = next_command(&mut ws).await;
        let mut answer = command.seed_reply();
        answer.some_other_thing = format!("ok\n{forged}");
        ws.send_text(wsloop::encode(&answer)).await;
    });
    let printed = server.wait_for_line(10, "the reply printed", |line| {
        line.starts_with("client dev-1 #")
    });
    assert!(!printed.contains('\u{1b}'), "ESC printed raw: {printed:?}");
    assert!(printed.contains("\\u{1b}"), "the escape shown: {printed:?}");
    assert!(
        printed.contains("forged"),
        "the whole reply on one line: {printed:?}"
    );
}
