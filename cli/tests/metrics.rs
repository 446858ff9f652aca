//! `GET /metrics` against the binary: parse the Prometheus text after a few
//! round trips, refusals and a close; behind the token unless
//! `--public-metrics`.
#![cfg(feature = "metrics")]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use async_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use async_tungstenite::tungstenite::protocol::CloseFrame;
use common::fs::TempDir;
use common::process::start_server;
use common::{bounded, next_close_code, request, wait_until};

const TOKEN: &str = "metrics-test-token";

/// A GET with extra `headers`; the status and the body.
fn get(addr: SocketAddr, target: &str, headers: &str) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("tcp connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\n{headers}\r\n");
    stream.write_all(request.as_bytes()).expect("send request");
    let mut answer = String::new();
    stream.read_to_string(&mut answer).expect("read the answer");
    let status = answer
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok());
    let body = answer.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    (
        status.unwrap_or_else(|| panic!("no status in {answer:?}")),
        body.to_string(),
    )
}

/// Parses the text format: `name{labels} value` lines by `name{labels}`;
/// fails on any line that is neither that nor a `# HELP`/`# TYPE` comment.
fn parse(text: &str) -> HashMap<String, f64> {
    let mut samples = HashMap::new();
    for line in text.lines() {
        if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let name = series.split('{').next().unwrap_or("");
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'),
            "bad metric name in {line:?}"
        );
        let value = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        assert!(
            samples.insert(series.to_string(), value).is_none(),
            "{series} twice"
        );
    }
    samples
}

fn scrape(addr: SocketAddr) -> HashMap<String, f64> {
    let (status, body) = get(
        addr,
        "/metrics",
        &format!("Authorization: Bearer {TOKEN}\r\n"),
    );
    assert_eq!(status, 200, "{body}");
    parse(&body)
}

#[test]
fn metrics_count_round_trips_refusals_and_closes_behind_the_token() {
    let dir = TempDir::new("metrics");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let args = ["server", "--token-file", token_file.to_str().unwrap()];
    let (mut server, addr) = start_server("metrics server", &args);

    // Behind the token.
    assert_eq!(get(addr, "/metrics", "").0, 401);
    assert_eq!(
        get(addr, "/metrics", "Authorization: Bearer wrong\r\n").0,
        401
    );

    // Three round trips and a normal close.
    bounded(20, async {
        let stream = smol::net::TcpStream::connect(addr)
            .await
            .expect("tcp connect");
        let url = format!("ws://{addr}/server?token={TOKEN}");
        let (mut ws, _) = async_tungstenite::client_async(url, stream)
            .await
            .expect("upgrade");
        for id in 1..=3 {
            assert_eq!(
                request(&mut ws, id, "Eject the hot dog.").await.request_id,
                id
            );
        }
        let close = CloseFrame {
            code: CloseCode::Normal,
            reason: "".into(),
        };
        ws.close(Some(close)).await.expect("send close");
        next_close_code(&mut ws).await;
    });
    // Refusals: no token, and a bad request.
    assert_eq!(common::get(addr, "/server"), 426);
    let no_token = b"GET /server HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n\
                     Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
                     Sec-WebSocket-Version: 13\r\n\r\n";
    assert_eq!(common::http_status(addr, no_token), 401);
    assert_eq!(common::http_status(addr, b"NONSENSE\r\n\r\n"), 400);

    // The close is counted when the connection task ends: no event to await.
    wait_until(10, "the close to be counted", || {
        scrape(addr).get("wsloop_closes_total{code=\"1000\"}") == Some(&1.0)
    });
    let m = scrape(addr);
    let at = |series: &str| {
        *m.get(series)
            .unwrap_or_else(|| panic!("{series} missing: {m:#?}"))
    };
    assert_eq!(at("wsloop_connections_open"), 0.0);
    assert_eq!(at("wsloop_connections_total"), 1.0);
    assert_eq!(at("wsloop_messages_received_total"), 3.0);
    assert_eq!(at("wsloop_messages_sent_total"), 3.0);
    assert!(at("wsloop_received_bytes_total") > 3.0 * 30.0);
    assert!(at("wsloop_sent_bytes_total") > 3.0 * 50.0);
    assert_eq!(at("wsloop_upgrades_refused_total{reason=\"token\"}"), 1.0);
    assert_eq!(
        at("wsloop_upgrades_refused_total{reason=\"bad_request\"}"),
        1.0
    );
    assert_eq!(at("wsloop_upgrades_refused_total{reason=\"origin\"}"), 0.0);
    assert_eq!(at("wsloop_upgrades_refused_total{reason=\"limit\"}"), 0.0);
    assert_eq!(at("wsloop_closes_total{code=\"none\"}"), 0.0);
    assert_eq!(at("wsloop_tls_handshake_failures_total"), 0.0);
    assert_eq!(at("wsloop_outbound_queue_depth"), 0.0);
    assert_eq!(at("wsloop_request_latency_seconds_count"), 0.0);
    assert_eq!(
        at("wsloop_request_latency_seconds_bucket{le=\"+Inf\"}"),
        0.0
    );
    assert!(at("wsloop_tcp_connections_total") >= 8.0);

    server.sigterm();
    server.finish(10);
}

#[test]
fn public_metrics_need_no_token() {
    let dir = TempDir::new("metrics-public");
    let token_file = dir.join("token");
    std::fs::write(&token_file, TOKEN).unwrap();
    let args = [
        "server",
        "--token-file",
        token_file.to_str().unwrap(),
        "--public-metrics",
    ];
    let (mut server, addr) = start_server("public metrics server", &args);
    let (status, body) = get(addr, "/metrics", "");
    assert_eq!(status, 200);
    assert!(parse(&body).contains_key("wsloop_connections_open"));
    server.sigterm();
    server.finish(10);
}

#[test]
fn server_initiated_requests_feed_the_latency_histogram() {
    use async_tungstenite::tungstenite::Message as Frame;
    use futures_lite::StreamExt;

    let server = common::TestServer::start(wsloop::Config::default());
    let hub = server.hub.clone();
    bounded(20, async {
        let mut ws = common::ws_connect(server.addr).await;
        wait_until(10, "the client to register", || hub.len() == 1);
        let id = hub.peers()[0].id();
        // The client answers the pushed request as the seed client would.
        let answer = async {
            while let Some(Ok(frame)) = ws.next().await {
                if let Frame::Text(text) = frame {
                    let pushed = wsloop::decode(text.as_bytes()).expect("a request");
                    let reply = wsloop::encode(&pushed.seed_reply());
                    ws.send(Frame::text(reply)).await.expect("send the reply");
                    break;
                }
            }
        };
        let (reply, ()) =
            futures_lite::future::zip(hub.request(id, "Eject all hot dogs"), answer).await;
        assert!(reply.expect("a reply").success);
    });
    let text = hub.metrics().render(&hub);
    let m = parse(&text);
    assert_eq!(
        m.get("wsloop_request_latency_seconds_count"),
        Some(&1.0),
        "{text}"
    );
    assert_eq!(
        m.get("wsloop_request_latency_seconds_bucket{le=\"+Inf\"}"),
        Some(&1.0)
    );
    assert_eq!(
        m.get("wsloop_request_latency_seconds_bucket{le=\"10\"}"),
        Some(&1.0)
    );
}
