//! The client as a device (`wsloop client --id NAME --exec PROGRAM`),
//! against a raw WebSocket server written here (async-tungstenite's own
//! handshake), so each test decides exactly which `requestID`s are pushed,
//! re-sends them, drops the connection, and sees every reply. The
//! programs are small shell scripts; what they did is read back from
//! files they write (how many times they ran, in what order).
#![cfg(feature = "exec")]

mod common;

use std::sync::{Arc, Mutex};

use async_tungstenite::tungstenite::handshake::server::{Request, Response};
use async_tungstenite::tungstenite::Message as Frame;
use common::fs::{lines, script, TempDir};
use common::process::{gone, kill, Proc};
use common::{bounded, next_message, wait_until, Ws};
use smol::net::TcpListener;
use wsloop::Message;

/// Starts `wsloop client --address ADDR ARGS... --exec PROGRAM`.
fn device(addr: &str, args: &[&str], program: &str) -> Proc {
    let mut all = vec!["client", "--address", addr, "--reconnect-delay", "100ms"];
    all.extend_from_slice(args);
    all.extend(["--exec", program]);
    Proc::wsloop("device", &all, None)
}

/// Accepts the device's next connection; returns it with the request
/// target it asked for (`/server?client=NAME`).
async fn accept(listener: &TcpListener) -> (Ws, String) {
    let (stream, _) = listener.accept().await.expect("accept the device");
    let target = Arc::new(Mutex::new(String::new()));
    let seen = Arc::clone(&target);
    // (The callback's type is tungstenite's, Err variant and all.)
    #[allow(clippy::result_large_err)]
    let callback = move |request: &Request, response: Response| {
        *seen.lock().expect("not poisoned") = request.uri().to_string();
        Ok(response)
    };
    let ws = async_tungstenite::accept_hdr_async(stream, callback)
        .await
        .expect("the device's handshake");
    let target = target.lock().expect("not poisoned").clone();
    (ws, target)
}

/// Pushes command `id` to the device, as the server's forwarder does.
async fn push(ws: &mut Ws, id: i64, command: &str) {
    let text = wsloop::encode(&Message::request(id, command));
    ws.send(Frame::text(text)).await.expect("push the command");
}

/// A listener on a free port, and its address as the device dials it.
async fn listen() -> (TcpListener, String) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr").to_string();
    (listener, addr)
}

#[test]
fn exec_maps_stdin_env_status_and_output() {
    let dir = TempDir::new("device-mapping");
    let program = script(
        &dir,
        "run.sh",
        r#"input=$(cat)
case "$WSLOOP_COMMAND" in
  echo) echo "stdin=$input id=$WSLOOP_REQUEST_ID client=$WSLOOP_CLIENT" ;;
  fail) echo "half done"; echo "disk on fire" >&2; exit 3 ;;
  big) head -c 10000 /dev/zero | tr '\0' a ;;
  noisy) head -c 5000 /dev/zero | tr '\0' e >&2; echo "END" >&2; exit 1 ;;
esac"#,
    );
    bounded(30, async {
        let (listener, addr) = listen().await;
        let _device = device(&addr, &["--id", "dev-1.a_b"], &program);
        let (mut ws, target) = accept(&listener).await;
        assert_eq!(
            target, "/server?client=dev-1.a_b",
            "the device names itself"
        );

        push(&mut ws, 41, "echo").await;
        let reply = next_message(&mut ws).await;
        assert_eq!(reply.request_id, 41);
        assert!(reply.success, "{reply:?}");
        assert!(reply.command.is_empty(), "a reply has no command");
        assert_eq!(
            reply.some_other_thing,
            "stdin=echo id=41 client=dev-1.a_b\n"
        );

        push(&mut ws, 42, "fail").await;
        let reply = next_message(&mut ws).await;
        assert!(!reply.success, "{reply:?}");
        assert_eq!(
            reply.some_other_thing,
            "half done\nexit status 3; stderr: disk on fire"
        );

        push(&mut ws, 43, "big").await;
        let reply = next_message(&mut ws).await;
        assert!(reply.success, "{reply:?}");
        assert_eq!(
            reply.some_other_thing,
            "a".repeat(wsloop::client::STDOUT_CAP)
        );

        push(&mut ws, 44, "noisy").await;
        let reply = next_message(&mut ws).await;
        let text = &reply.some_other_thing;
        assert!(
            !reply.success && text.starts_with("exit status 1; stderr: e"),
            "{text:?}"
        );
        assert!(text.ends_with("eeeEND"), "the tail of stderr: {text:?}");
        let stderr = text
            .split_once("stderr: ")
            .map_or(0, |(_, tail)| tail.len());
        assert!(
            stderr <= wsloop::client::STDERR_TAIL,
            "{stderr} bytes of stderr"
        );
    });
}

#[test]
fn exec_timeout_kills_the_whole_process_group() {
    let dir = TempDir::new("device-timeout");
    let grandchild = dir.join("grandchild");
    let program = script(
        &dir,
        "slow.sh",
        &format!(
            "sleep 300 &\necho $! > {}\necho started\nwait",
            grandchild.display()
        ),
    );
    bounded(30, async {
        let (listener, addr) = listen().await;
        let _device = device(&addr, &["--exec-timeout", "1s"], &program);
        let (mut ws, target) = accept(&listener).await;
        assert_eq!(target, "/server", "an anonymous device asks for /server");
        let started = std::time::Instant::now();
        push(&mut ws, 1, "sleep").await;
        let reply = next_message(&mut ws).await;
        assert!(!reply.success, "{reply:?}");
        assert!(
            reply
                .some_other_thing
                .starts_with("started\ntimed out after 1s; its process group was killed"),
            "{reply:?}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(10));
        let pid = lines(&grandchild).concat();
        assert!(!pid.is_empty(), "the script recorded its grandchild");
        wait_until(5, "the grandchild sleep to be killed", || gone(&pid));
    });
}

#[test]
fn one_at_a_time_keeps_the_order() {
    let dir = TempDir::new("device-order");
    let log = dir.join("log");
    let program = script(
        &dir,
        "step.sh",
        &format!(
            "echo start $WSLOOP_REQUEST_ID >> {log}\nsleep 0.2\necho end $WSLOOP_REQUEST_ID >> {log}\necho done $WSLOOP_REQUEST_ID",
            log = log.display()
        ),
    );
    bounded(30, async {
        let (listener, addr) = listen().await;
        let _device = device(&addr, &["--id", "orderly"], &program);
        let (mut ws, _) = accept(&listener).await;
        for id in 1..=3 {
            push(&mut ws, id, &format!("step {id}")).await;
        }
        for id in 1..=3 {
            let reply = next_message(&mut ws).await;
            assert_eq!(reply.request_id, id, "replies in order");
            assert_eq!(reply.some_other_thing, format!("done {id}\n"));
        }
        let expected: Vec<String> = (1..=3)
            .flat_map(|id| [format!("start {id}"), format!("end {id}")])
            .collect();
        assert_eq!(lines(&log), expected, "never two at once, in order");
    });
}

#[test]
fn a_duplicate_gets_the_stored_reply_and_never_runs_twice() {
    let dir = TempDir::new("device-duplicate");
    let runs = dir.join("runs");
    let program = script(
        &dir,
        "count.sh",
        &format!(
            "echo $WSLOOP_REQUEST_ID >> {}\n[ \"$WSLOOP_COMMAND\" = slow ] && sleep 0.5\necho ran $WSLOOP_REQUEST_ID",
            runs.display()
        ),
    );
    bounded(30, async {
        let (listener, addr) = listen().await;
        let _device = device(&addr, &["--id", "dup"], &program);
        let (mut ws, _) = accept(&listener).await;

        // Answered, then re-sent: the stored reply, not a second run.
        push(&mut ws, 5, "quick").await;
        let first = next_message(&mut ws).await;
        push(&mut ws, 5, "quick").await;
        let again = next_message(&mut ws).await;
        assert_eq!(again, first);

        // Re-sent while it still runs: one reply, when it is done. The
        // next message being command 7's reply shows no second one for 6.
        push(&mut ws, 6, "slow").await;
        push(&mut ws, 6, "slow").await;
        let reply = next_message(&mut ws).await;
        assert_eq!((reply.request_id, reply.success), (6, true));
        push(&mut ws, 7, "quick").await;
        assert_eq!(next_message(&mut ws).await.request_id, 7);

        // After a drop and a reconnect, a re-send still finds the record.
        drop(ws);
        let (mut ws, _) = accept(&listener).await;
        push(&mut ws, 5, "quick").await;
        assert_eq!(next_message(&mut ws).await, first);

        // The same id for another command is refused, not run.
        push(&mut ws, 7, "something else").await;
        let refused = next_message(&mut ws).await;
        assert!(!refused.success && refused.some_other_thing.starts_with("not run:"));
        assert_eq!(lines(&runs), ["5", "6", "7"], "each ran once");
    });
}

#[test]
fn a_device_killed_mid_run_answers_interrupted_after_its_restart() {
    let dir = TempDir::new("device-kill9");
    let (runs, pids, state) = (dir.join("runs"), dir.join("pids"), dir.join("state"));
    let program = script(
        &dir,
        "hang.sh",
        &format!(
            "echo $$ >> {pids}\necho $WSLOOP_REQUEST_ID >> {runs}\n[ \"$WSLOOP_COMMAND\" = hang ] && sleep 300\necho ok",
            pids = pids.display(),
            runs = runs.display()
        ),
    );
    let state_arg = state.to_str().expect("UTF-8").to_string();
    bounded(60, async {
        let (listener, addr) = listen().await;
        let args = ["--id", "phoenix", "--state", &state_arg];
        let device1 = device(&addr, &args, &program);
        let (mut ws, _) = accept(&listener).await;
        push(&mut ws, 1, "quick").await;
        let replied = next_message(&mut ws).await;
        assert!(replied.success, "{replied:?}");
        push(&mut ws, 2, "hang").await;
        wait_until(10, "command 2 to start", || lines(&runs).len() == 2);
        // kill -9: nothing of the device runs after this, but its program
        // does (ended here whatever happens, once the test is over).
        drop(device1);
        let _cleanup = KillGroups(lines(&pids));
        let program_pid = lines(&pids).pop().expect("command 2 noted its pid");
        assert!(
            !gone(&program_pid),
            "a SIGKILLed device cannot end its program"
        );

        let _device2 = device(&addr, &args, &program);
        let (mut ws, _) = accept(&listener).await;
        push(&mut ws, 2, "hang").await;
        let reply = next_message(&mut ws).await;
        assert_eq!(reply.request_id, 2);
        assert!(!reply.success, "{reply:?}");
        assert!(
            reply.some_other_thing.starts_with("interrupted: "),
            "{reply:?}"
        );
        assert!(reply.command.is_empty());
        // The one that had replied before the kill: its stored reply.
        push(&mut ws, 1, "quick").await;
        assert_eq!(next_message(&mut ws).await, replied);
        // Asked again: the same interrupted answer, still not run.
        push(&mut ws, 2, "hang").await;
        assert_eq!(next_message(&mut ws).await, reply);
        assert_eq!(lines(&runs), ["1", "2"], "nothing ran twice");
        // The restart ended what the killed device had left running.
        wait_until(5, "the leftover program to be killed", || {
            gone(&program_pid)
        });
    });
}

/// Kills the process groups led by these pids when dropped.
struct KillGroups(Vec<String>);

impl Drop for KillGroups {
    fn drop(&mut self) {
        for pid in &self.0 {
            kill("-9", &format!("-{pid}"));
        }
    }
}

#[test]
fn a_stopped_device_answers_once_after_sigcont() {
    let dir = TempDir::new("device-sigstop");
    let runs = dir.join("runs");
    let program = script(
        &dir,
        "once.sh",
        &format!("echo $WSLOOP_REQUEST_ID >> {}\necho ran", runs.display()),
    );
    bounded(30, async {
        let (listener, addr) = listen().await;
        let device = device(&addr, &["--id", "sleepy"], &program);
        let (mut ws, _) = accept(&listener).await;
        let pid = device.pid().to_string();
        assert!(kill("-STOP", &pid), "kill -STOP {pid}");
        // Sent while it is frozen, and re-sent as a server that gave up
        // waiting would after a reconnect.
        push(&mut ws, 1, "go").await;
        push(&mut ws, 1, "go").await;
        assert!(kill("-CONT", &pid), "kill -CONT {pid}");
        let reply = next_message(&mut ws).await;
        assert_eq!((reply.request_id, reply.success), (1, true), "{reply:?}");
        push(&mut ws, 2, "go").await;
        assert_eq!(next_message(&mut ws).await.request_id, 2, "one reply for 1");
        assert_eq!(lines(&runs), ["1", "2"]);
    });
}

#[test]
fn concurrency_two_runs_two_at_once() {
    let dir = TempDir::new("device-concurrency");
    let log = dir.join("log");
    // Each waits (bounded) until the other has started: only two running
    // at once can both finish early.
    let program = script(
        &dir,
        "pair.sh",
        &format!(
            "echo start >> {log}\ni=0\nwhile [ $(grep -c start {log}) -lt 2 ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done\necho waited $i",
            log = log.display()
        ),
    );
    bounded(30, async {
        let (listener, addr) = listen().await;
        let _device = device(
            &addr,
            &["--id", "pair", "--exec-concurrency", "2"],
            &program,
        );
        let (mut ws, _) = accept(&listener).await;
        push(&mut ws, 1, "a").await;
        push(&mut ws, 2, "b").await;
        for _ in 0..2 {
            let reply = next_message(&mut ws).await;
            assert!(reply.success, "{reply:?}");
            assert_ne!(
                reply.some_other_thing, "waited 100\n",
                "ran one after the other"
            );
        }
    });
}

#[test]
fn sigterm_closes_the_device_and_kills_its_running_program() {
    let dir = TempDir::new("device-sigterm");
    let grandchild = dir.join("grandchild");
    let program = script(
        &dir,
        "hang.sh",
        &format!("sleep 300 &\necho $! > {}\nwait", grandchild.display()),
    );
    bounded(30, async {
        let (listener, addr) = listen().await;
        let mut device = device(&addr, &["--id", "term"], &program);
        let (mut ws, _) = accept(&listener).await;
        push(&mut ws, 1, "hang").await;
        wait_until(10, "the program to start", || {
            !lines(&grandchild).is_empty()
        });
        device.sigterm();
        assert_eq!(common::next_close_code(&mut ws).await, Some(1000));
        let finished = device.finish(10);
        assert!(finished.status.success(), "{finished:?}");
        let pid = lines(&grandchild).concat();
        wait_until(5, "the grandchild sleep to be killed", || gone(&pid));
    });
}
