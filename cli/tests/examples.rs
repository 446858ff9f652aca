//! Runs each teaching example in `examples/` briefly and checks the
//! behaviour its header promises, so the examples never rot.
//!
//! The examples are built once with a nested `cargo build` (integration
//! tests cannot name example binaries with `env!`), whose JSON messages say
//! where each binary is. `cargo test` releases the build lock before it runs
//! tests, so the nested build does not wait on it. Every run is bounded in
//! time and killed if it overstays.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{mpsc, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

#[allow(unused)]
mod common;

/// The examples this file tests.
const EXAMPLES: [&str; 8] = [
    "one_shot_bug",
    "persistent_loop",
    "reader_task_select",
    "heartbeat",
    "embed_in_smol",
    "loadgen",
    "fanout_server",
    "local_server",
];

/// The examples that need features beyond the codec (their
/// `required-features`), built when this test run has them.
const FEATURED_EXAMPLES: &[&str] = if cfg!(all(feature = "serde", feature = "topics")) {
    &["typed_chat"]
} else {
    &[]
};

/// Bound for the one nested build (a cold build compiles the examples only;
/// the library is already built for this test).
const BUILD_LIMIT: Duration = Duration::from_secs(600);

/// Bound for one self-contained demo run. Each finishes in under 4 s.
const RUN_LIMIT: Duration = Duration::from_secs(20);

/// Wait for a server-mode example to print its address.
const STARTUP_LIMIT: Duration = Duration::from_secs(10);

/// Builds the examples once; maps each name to its binary.
fn binary(name: &str) -> PathBuf {
    static BUILT: OnceLock<HashMap<String, PathBuf>> = OnceLock::new();
    let built = BUILT.get_or_init(build_examples);
    built
        .get(name)
        .unwrap_or_else(|| panic!("example {name} was not built"))
        .clone()
}

fn build_examples() -> HashMap<String, PathBuf> {
    let mut cargo = Command::new(env!("CARGO"));
    // From the repository root: the examples are the library's (the package
    // there), built with the features of this test run's workspace build.
    cargo
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .args(["build", "--quiet", "--offline", "--message-format=json"]);
    for name in EXAMPLES.iter().chain(FEATURED_EXAMPLES) {
        cargo.args(["--example", name]);
    }
    let child = cargo
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("cargo runs");
    let (status, stdout) = wait_bounded(Guard(child), BUILD_LIMIT, "cargo build --example ...");
    assert!(status.success(), "building the examples failed");

    // One JSON object per line; artifacts of kind "example" name their binary.
    let mut built = HashMap::new();
    for line in stdout.lines() {
        let Ok(message) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        let is_example = message["target"]["kind"]
            .as_array()
            .is_some_and(|kinds| kinds.iter().any(|k| k == "example"));
        if let (true, Some(name), Some(exe)) = (
            is_example,
            message["target"]["name"].as_str(),
            message["executable"].as_str(),
        ) {
            built.insert(name.to_string(), PathBuf::from(exe));
        }
    }
    built
}

/// Kills the child process when dropped, so a failed assertion leaves no
/// example running.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits for the child to exit within `limit`; returns its status and
/// everything it printed. Panics (killing it) if it overstays.
fn wait_bounded(mut child: Guard, limit: Duration, what: &str) -> (ExitStatus, String) {
    // Read stdout on a thread so a full pipe can never stall the child.
    let mut stdout = child.0.stdout.take().expect("stdout is piped");
    let reader = thread::spawn(move || {
        let mut text = String::new();
        let _ = stdout.read_to_string(&mut text);
        text
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.0.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() >= deadline {
            drop(child);
            let text = reader.join().unwrap_or_default();
            panic!("{what} did not finish within {limit:?}; output so far:\n{text}");
        }
        thread::sleep(Duration::from_millis(20));
    };
    (status, reader.join().expect("stdout reader"))
}

/// Runs a self-contained demo to completion (bounded).
fn run_demo(name: &str) -> (ExitStatus, String) {
    run_with(name, &[])
}

/// Runs an example with arguments to completion (bounded).
fn run_with(name: &str, args: &[&str]) -> (ExitStatus, String) {
    let child = Command::new(binary(name))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("example starts");
    let started = Instant::now();
    let (status, stdout) = wait_bounded(Guard(child), RUN_LIMIT, name);
    eprintln!(
        "--- {name} {args:?} ({:.1?}, {status}):\n{stdout}",
        started.elapsed()
    );
    (status, stdout)
}

/// Starts an example in `--address 127.0.0.1:0` server mode and returns it
/// with the address it printed on its first line (`listening on ADDR`).
fn start_server(name: &str) -> (Guard, String) {
    start_server_with(name, &[])
}

/// [`start_server`] with more arguments after the address.
fn start_server_with(name: &str, args: &[&str]) -> (Guard, String) {
    let mut child = Guard(
        Command::new(binary(name))
            .args(["--address", "127.0.0.1:0"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("example starts"),
    );
    let stdout = child.0.stdout.take().expect("stdout is piped");
    let (line_tx, line_rx) = mpsc::channel();
    thread::spawn(move || {
        let mut stdout = BufReader::new(stdout);
        let mut first = String::new();
        let _ = stdout.read_line(&mut first);
        let _ = line_tx.send(first);
        // Keep draining the rest until the child exits: a closed pipe would
        // make its next println! panic.
        let _ = std::io::copy(&mut stdout, &mut std::io::sink());
    });
    let first = line_rx
        .recv_timeout(STARTUP_LIMIT)
        .unwrap_or_else(|_| panic!("{name} printed no address within {STARTUP_LIMIT:?}"));
    let address = first
        .trim()
        .strip_prefix("listening on ")
        .unwrap_or_else(|| panic!("{name}'s first line is not `listening on ADDR`: {first:?}"))
        .to_string();
    (child, address)
}

/// The number in `text` right after `prefix` (for example the `3` in
/// `answered 3 pings` after `answered `).
fn number_after(text: &str, prefix: &str) -> f64 {
    let rest = &text[text
        .find(prefix)
        .unwrap_or_else(|| panic!("no {prefix:?} in:\n{text}"))
        + prefix.len()..];
    let number: String = rest
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    number
        .parse()
        .unwrap_or_else(|_| panic!("no number after {prefix:?} in:\n{text}"))
}

#[test]
fn one_shot_bug_reproduces_the_second_request_failing() {
    let (status, out) = run_demo("one_shot_bug");
    assert!(status.success(), "the bug did not reproduce:\n{out}");
    assert!(out.contains("client: reply 1: Command 'Eject the hot dog 1.' processed successfully."));
    assert!(
        out.contains("client: request 2 failed: read failed"),
        "{out}"
    );
    assert!(!out.contains("client: reply 2"), "{out}");
    assert!(out.contains("bug reproduced"), "{out}");
}

#[test]
fn persistent_loop_answers_every_request_on_one_connection() {
    let (status, out) = run_demo("persistent_loop");
    assert!(status.success(), "not every reply matched:\n{out}");
    // Part 1 (the hand-written loop) and part 2 (wsloop::Server) both.
    assert_eq!(
        out.matches("5 of 5 replies matched, on one connection")
            .count(),
        2,
        "{out}"
    );
    assert_eq!(
        out.matches("client: reply 5: Command 'Eject the hot dog 5.'")
            .count(),
        2
    );
    assert_eq!(
        out.matches("server: client connected").count(),
        1,
        "one connection: {out}"
    );
}

#[test]
fn reader_task_select_replies_arrive_through_the_channel() {
    let (status, out) = run_demo("reader_task_select");
    assert!(status.success(), "not every reply came through:\n{out}");
    for id in 1..=5 {
        assert!(
            out.contains(&format!("tick: sending request {id}\n")),
            "{out}"
        );
        assert!(
            out.contains(&format!("reader task: got reply {id} -> channel")),
            "{out}"
        );
        assert!(out.contains(&format!(
            "channel: reply {id} (Command 'Eject the hot dog {id}.'"
        )));
    }
    assert!(
        out.contains("5 of 5 replies came through the channel and matched"),
        "{out}"
    );
}

#[test]
fn reader_task_select_talks_to_the_persistent_loop_server() {
    // Both `--address` modes at once: the hand-written loop serves, the
    // select-loop client talks to it.
    let (_server, address) = start_server("persistent_loop");
    let (status, out) = run_with("reader_task_select", &["--address", &address]);
    assert!(status.success(), "{out}");
    assert!(
        out.contains("5 of 5 replies came through the channel and matched"),
        "{out}"
    );
}

#[test]
fn reader_task_select_sees_the_one_shot_server_hang_up() {
    // Against the buggy server, the first reply arrives, then the reader
    // task sees the connection end and the channel closes.
    let (_server, address) = start_server("one_shot_bug");
    let (status, out) = run_with("reader_task_select", &["--address", &address]);
    assert_eq!(status.code(), Some(1), "{out}");
    assert!(out.contains("channel: reply 1 ("), "{out}");
    assert!(!out.contains("channel: reply 2"), "{out}");
    assert!(
        out.contains("channel closed: the reader task ended"),
        "{out}"
    );
    assert!(
        out.contains("1 of 5 replies came through the channel"),
        "{out}"
    );
}

#[test]
fn heartbeat_keeps_the_live_client_and_drops_the_dead_peer() {
    let started = Instant::now();
    let (status, out) = run_demo("heartbeat");
    assert!(status.success(), "heartbeat demo failed:\n{out}");
    // The live client answered at least three pings and stayed ≥ 3 s.
    assert!(
        out.contains("summary: live client stayed connected for"),
        "{out}"
    );
    assert!(number_after(&out, "stayed connected for ") >= 3.0, "{out}");
    assert!(number_after(&out, "and answered ") >= 3.0, "{out}");
    // The dead peer was dropped within idle timeout (2 s) + 1 s...
    let dropped_after = number_after(&out, "dead peer dropped after ");
    assert!(
        (1.9..=3.0).contains(&dropped_after),
        "dropped after {dropped_after} s:\n{out}"
    );
    // ... and the server told it why.
    assert!(
        out.contains("a Close frame: 1001 \"idle timeout\""),
        "{out}"
    );
    assert!(started.elapsed() >= Duration::from_secs(3), "{out}");
}

#[test]
fn embed_in_smol_pushes_to_each_client_and_serves_requests() {
    let (status, out) = run_with("embed_in_smol", &["--address", "127.0.0.1:0", "--once"]);
    assert!(status.success(), "embed_in_smol failed:\n{out}");
    assert!(
        out.contains("answered: Command 'Welcome, client"),
        "the pushed command was not answered:\n{out}"
    );
    assert!(
        out.contains("Command 'Eject the hot dog 1.' processed successfully."),
        "the client's own request was not answered:\n{out}"
    );
}

#[test]
fn loadgen_checks_every_reply_against_a_persistent_server() {
    let (_server, address) = start_server("persistent_loop");
    let args = [
        "throughput",
        "-a",
        address.as_str(),
        "-c",
        "2",
        "-d",
        "4",
        "--duration",
        "1",
        "--warmup",
        "0",
    ];
    let (status, out) = run_with("loadgen", &args);
    assert!(status.success(), "loadgen failed:\n{out}");
    let result = out
        .lines()
        .find(|line| line.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line:\n{out}"));
    assert!(result.contains(" errors=0"), "{result}");
    assert!(number_after(result, "roundtrips=") > 0.0, "{result}");
}

/// The single-threaded server answers every request through the `Local`
/// bridge, and with `--plain` without it (the README's comparison).
#[test]
fn loadgen_checks_every_reply_from_the_local_server() {
    for plain in [false, true] {
        let (_server, address) = if plain {
            start_server_with("local_server", &["--plain"])
        } else {
            start_server("local_server")
        };
        let args = ["throughput", "-a", &address, "-c", "4", "-d", "4"];
        let (status, out) = run_with(
            "loadgen",
            &[&args[..], &["--duration", "1", "--warmup", "0"]].concat(),
        );
        assert!(status.success(), "loadgen failed:\n{out}");
        let result = out
            .lines()
            .find(|line| line.starts_with("RESULT "))
            .unwrap_or_else(|| panic!("no RESULT line:\n{out}"));
        assert!(result.contains(" errors=0"), "plain={plain}: {result}");
        assert!(number_after(result, "roundtrips=") > 0.0, "{result}");
    }
}

#[test]
fn loadgen_times_broadcasts_from_the_fanout_server() {
    let (server, address) = start_server("fanout_server");
    let pid = server.0.id().to_string();
    let args = [
        "idle",
        "-a",
        address.as_str(),
        "-c",
        "20",
        "--fanout",
        "3",
        "--server-pid",
        pid.as_str(),
    ];
    let (status, out) = run_with("loadgen", &args);
    assert!(status.success(), "loadgen failed:\n{out}");
    let result = out
        .lines()
        .find(|line| line.starts_with("RESULT "))
        .unwrap_or_else(|| panic!("no RESULT line:\n{out}"));
    assert!(result.contains(" errors=0"), "{result}");
    // Every broadcast reached the 19 connections besides the trigger.
    assert_eq!(number_after(result, "fanout_clients="), 19.0, "{result}");
    assert!(number_after(result, "fanout_ms=") > 0.0, "{result}");
    assert!(number_after(result, "fanout_cpu_ms=") > 0.0, "{result}");
}

#[test]
#[cfg(all(feature = "serde", feature = "topics"))]
fn typed_chat_demo_delivers_to_the_room_only() {
    let (status, out) = run_demo("typed_chat");
    assert!(status.success(), "typed_chat failed:\n{out}");
    // Replies correlated by their request's id, each client counting from 1.
    assert!(out.contains("alice: Joined { id: 1, members: 2 }"), "{out}");
    assert!(out.contains("alice: Sent { id: 2, delivered: 2 }"), "{out}");
    assert!(out.contains("bob heard alice: hello, bob"), "{out}");
    assert!(out.contains("carol heard 0 message(s)"), "{out}");
    assert!(
        out.contains("alice: Error { id: 3, error: \"not in room"),
        "{out}"
    );
    // on_disconnect, once per client.
    for name in ["alice", "bob", "carol"] {
        assert_eq!(
            out.matches(&format!("server: {name} left")).count(),
            1,
            "{out}"
        );
    }
}

/// A raw WebSocket peer (tungstenite, JSON by hand) against the example's
/// server: the wire format its header documents.
#[test]
#[cfg(all(feature = "serde", feature = "topics"))]
fn typed_chat_server_speaks_its_documented_json_to_a_raw_peer() {
    use async_tungstenite::tungstenite::Message as Frame;
    use serde_json::{json, Value};

    let (_server, address) = start_server("typed_chat");
    let addr: std::net::SocketAddr = address.parse().expect("an address");
    common::bounded(20, async {
        async fn exchange(ws: &mut common::Ws, out: Value) -> Value {
            ws.send(Frame::text(out.to_string())).await.expect("send");
            next_json(ws).await
        }
        async fn next_json(ws: &mut common::Ws) -> Value {
            use futures_lite::StreamExt;
            loop {
                match ws.next().await {
                    Some(Ok(Frame::Text(text))) => {
                        return serde_json::from_str(&text).expect("JSON from the server")
                    }
                    Some(Ok(_)) => continue,
                    other => panic!("expected a text frame, got {other:?}"),
                }
            }
        }
        let mut ann = common::ws_connect(addr).await;
        let mut ben = common::ws_connect(addr).await;
        let join = |id, name| json!({"type":"join","id":id,"room":"lobby","name":name});
        assert_eq!(
            exchange(&mut ann, join(7, "ann")).await,
            json!({"type":"joined","id":7,"members":1})
        );
        assert_eq!(
            exchange(&mut ben, join(8, "ben")).await,
            json!({"type":"joined","id":8,"members":2})
        );
        let say = json!({"type":"say","id":9,"room":"lobby","text":"hi"});
        let said = json!({"type":"said","room":"lobby","from":"ann","text":"hi"});
        // Ann's reply comes straight back from the handler; the push to
        // every member (ann too) through each one's queue, after it.
        assert_eq!(
            exchange(&mut ann, say).await,
            json!({"type":"sent","id":9,"delivered":2})
        );
        assert_eq!(next_json(&mut ann).await, said);
        assert_eq!(next_json(&mut ben).await, said);
        // Malformed: an unknown type, answered under the id still readable.
        let reply = exchange(&mut ben, json!({"type":"shout","id":10})).await;
        assert_eq!(
            (&reply["type"], &reply["id"]),
            (&json!("error"), &json!(10))
        );
    });
}
