//! Extreme settings do not panic: a heartbeat, an idle timeout or a
//! request timeout of `Duration::MAX` (which `Instant + duration` would
//! overflow on) validates, and a server and a client with it still serve
//! requests; a request-head limit of the server's choosing is enforced.

mod common;

use std::time::Duration;

use common::{bounded, http_status, seed, TestServer};
use wsloop::client::{Client, ClientOptions};
use wsloop::{Config, MAX_TIMEOUT};

/// A server with `config`, and a wsloop client with the same `config`:
/// both connection loops, the session and the hub run with it.
fn round_trip(config: Config) {
    config.validate().expect("an extreme setting validates");
    let server = TestServer::start(config.clone());
    let ex = smol::Executor::new();
    bounded(
        10,
        ex.run(async {
            let options = ClientOptions::new(server.addr.to_string()).with_config(config);
            let client = Client::connect(&ex, options, seed).await.expect("connect");
            let reply = client.request("extreme").await.expect("a reply");
            assert_eq!(
                reply.some_other_thing,
                "Command 'extreme' processed successfully."
            );
            // And a push from the server side, through Hub::request.
            let hub = &server.hub;
            let id = hub.peers().first().expect("one peer").id();
            let answer = hub.request(id, "pushed").await.expect("the client answers");
            assert!(answer.success);
            client.close().await.expect("clean close");
        }),
    );
}

#[test]
fn heartbeat_of_duration_max() {
    let config = Config::default().with_heartbeat(Duration::MAX);
    assert_eq!(config.idle_timeout(), MAX_TIMEOUT);
    round_trip(config);
}

#[test]
fn idle_timeout_of_duration_max() {
    let config = Config::default().with_idle_timeout(Duration::MAX);
    assert_eq!(config.idle_timeout(), MAX_TIMEOUT);
    round_trip(config);
}

#[test]
fn request_timeout_of_duration_max() {
    round_trip(Config::default().with_request_timeout(Duration::MAX));
}

#[test]
fn every_timeout_at_duration_max() {
    round_trip(
        Config::default()
            .with_heartbeat(Duration::MAX)
            .with_idle_timeout(Duration::MAX)
            .with_request_timeout(Duration::MAX)
            .with_handshake_timeout(Duration::MAX)
            .with_write_timeout(Duration::MAX)
            .with_message_timeout(Duration::MAX),
    );
}

#[test]
fn request_head_limit_is_configurable() {
    let server = TestServer::start(Config::default().with_max_request_head_size(512));
    let small = format!("GET /stats HTTP/1.1\r\nHost: {}\r\n\r\n", server.addr);
    assert_eq!(http_status(server.addr, small.as_bytes()), 200);
    let padding = "x".repeat(600);
    let large = format!(
        "GET /stats HTTP/1.1\r\nHost: {}\r\nX-Pad: {padding}\r\n\r\n",
        server.addr
    );
    assert_eq!(http_status(server.addr, large.as_bytes()), 431);
    assert!(Config::default()
        .with_max_request_head_size(0)
        .validate()
        .is_err());
}
