//! Both binaries together, as the README's "Commanding devices"
//! walkthrough runs them: `wsloop server --state --operator-token-file
//! --tokens` and a real device, `wsloop client --id NAME --token-file
//! --state DIR --exec PROGRAM`, driven through the operator API with plain
//! HTTP. The device's program appends each run to a file, so "exactly
//! once" is a count of lines; every wait is on the API's record or on
//! those files (bounded polls: neither has anything to block on).
#![cfg(all(feature = "forwarder", feature = "exec"))]

mod common;

use std::net::SocketAddr;

use common::fs::{lines, script, TempDir};
use common::process::{gone, kill, start_server, Proc};
use common::wait_until;
use serde_json::{json, Value};

/// The operator's token.
const OPERATOR: &str = "op-pair-secret";

/// The device's name and its own token (as in the walkthrough).
const NAME: &str = "pump-1";
const DEVICE_TOKEN: &str = "pump-1-secret";

/// Every wait on the API or the files: ample on a loaded 2-core machine.
const WAIT_SECS: u64 = 20;

/// One test's files: tokens, the program, its run log, both `--state`s
/// (a [`TempDir`]: kept for a look when the test fails).
struct Setup {
    dir: TempDir,
}

impl Setup {
    /// Writes the token files and the device's program: it logs
    /// `ID COMMAND` to `runs`, its pid to `pids`, sleeps for `hang`, and
    /// prints `done: COMMAND`.
    fn new(name: &str) -> Setup {
        let dir = TempDir::new(&format!("pair-{name}"));
        std::fs::write(dir.join("operator.token"), OPERATOR).expect("operator token");
        std::fs::write(dir.join("tokens"), format!("{NAME} {DEVICE_TOKEN}\n")).expect("tokens");
        std::fs::write(dir.join("device.token"), DEVICE_TOKEN).expect("device token");
        let body = format!(
            "command=$(cat)\necho $$ >> {pids}\necho \"$WSLOOP_REQUEST_ID $command\" >> {runs}\n\
             [ \"$command\" = hang ] && sleep 300\necho \"done: $command\"",
            pids = dir.join("pids").display(),
            runs = dir.join("runs").display(),
        );
        script(&dir, "run.sh", &body);
        Setup { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.join(name).to_string_lossy().into_owned()
    }

    /// `wsloop server --state DIR --operator-token-file F --tokens F`.
    fn server(&self) -> (Proc, SocketAddr) {
        let (state, operator, tokens) = (
            self.path("server-state"),
            self.path("operator.token"),
            self.path("tokens"),
        );
        let args = [
            "server",
            "--state",
            &state,
            "--operator-token-file",
            &operator,
            "--tokens",
            &tokens,
        ];
        start_server("server", &args)
    }

    /// `wsloop client --id NAME --token-file F --state DIR --exec run.sh`.
    fn device(&self, addr: SocketAddr) -> Proc {
        let (addr, token, state, program) = (
            addr.to_string(),
            self.path("device.token"),
            self.path("device-state"),
            self.path("run.sh"),
        );
        let args = [
            "client",
            "--address",
            &addr,
            "--reconnect-delay",
            "100ms",
            "--id",
            NAME,
            "--token-file",
            &token,
            "--state",
            &state,
            "--exec",
            &program,
        ];
        Proc::wsloop("device", &args, None)
    }

    /// The runs the program logged, `ID COMMAND` each.
    fn runs(&self) -> Vec<String> {
        lines(&self.dir.join("runs"))
    }

    /// The pids the program logged, one per run.
    fn pids(&self) -> Vec<String> {
        lines(&self.dir.join("pids"))
    }
}

/// One call to the operator API with the operator token.
fn api(addr: SocketAddr, method: &str, target: &str, body: Option<Value>) -> (u16, Value) {
    common::http::api(addr, OPERATOR, method, target, body)
}

/// `POST /api/clients/NAME/commands{query}` with `command`.
fn send(addr: SocketAddr, command: &str, query: &str) -> (u16, Value) {
    let target = format!("/api/clients/{NAME}/commands{query}");
    api(addr, "POST", &target, Some(json!({ "command": command })))
}

/// The requestID in an API answer.
fn id_of(body: &Value) -> i64 {
    body["requestID"]
        .as_i64()
        .unwrap_or_else(|| panic!("no requestID in {body}"))
}

/// The record of command `id`.
fn record(addr: SocketAddr, id: i64) -> Value {
    let (status, body) = api(
        addr,
        "GET",
        &format!("/api/clients/{NAME}/commands/{id}"),
        None,
    );
    assert_eq!(status, 200, "{body}");
    body
}

/// Waits for command `id`'s record to be final; returns it.
fn final_record(addr: SocketAddr, id: i64) -> Value {
    let mut last = Value::Null;
    wait_until(WAIT_SECS, &format!("command {id} to be final"), || {
        last = record(addr, id);
        !matches!(last["status"].as_str(), Some("queued" | "sent"))
    });
    last
}

/// Waits until the server lists the device as connected.
fn wait_connected(addr: SocketAddr) {
    wait_until(WAIT_SECS, "the device to be connected", || {
        let (_, list) = api(addr, "GET", "/api/clients", None);
        list["clients"].as_array().is_some_and(|c| {
            c.iter()
                .any(|c| c["name"] == NAME && c["connected"] == true)
        })
    });
}

/// Kills the program's process groups when dropped, whatever the test did.
struct KillGroups<'a>(&'a Setup);

impl Drop for KillGroups<'_> {
    fn drop(&mut self) {
        for pid in self.0.pids() {
            kill("-9", &format!("-{pid}"));
        }
    }
}

#[test]
fn a_command_queued_while_the_device_is_offline_runs_once_when_it_starts() {
    let setup = Setup::new("offline");
    let (_server, addr) = setup.server();
    // Listed in --tokens, never connected: known, and the command waits.
    let (status, body) = send(addr, "reboot", "");
    assert_eq!(
        (status, body["status"].as_str()),
        (202, Some("queued")),
        "{body}"
    );
    let id = id_of(&body);
    assert!(setup.runs().is_empty());

    let mut device = setup.device(addr);
    let done = final_record(addr, id);
    assert_eq!(done["status"], "replied", "{done}");
    assert_eq!(done["reply"]["success"], true, "{done}");
    assert_eq!(done["reply"]["someOtherThing"], "done: reboot\n", "{done}");
    // A second command, answered in time: the device is live, and
    // nothing ran the first one again meanwhile.
    let (status, second) = send(addr, "status", "?wait=10s");
    assert_eq!(
        (status, second["status"].as_str()),
        (200, Some("replied")),
        "{second}"
    );
    assert_eq!(second["reply"]["someOtherThing"], "done: status\n");
    assert_eq!(
        setup.runs(),
        [format!("{id} reboot"), format!("{} status", id + 1)],
        "each ran once, in order"
    );
    // A stop and a restart of the device with its --state change nothing.
    device.sigterm();
    assert!(device.finish(10).status.success());
    let _device = setup.device(addr);
    wait_connected(addr);
    let (status, third) = send(addr, "after", "?wait=10s");
    assert_eq!(status, 200, "{third}");
    assert_eq!(setup.runs().len(), 3, "{:?}", setup.runs());
}

#[test]
fn a_device_killed_while_its_program_runs_does_not_run_it_again() {
    let setup = Setup::new("kill9");
    let _groups = KillGroups(&setup);
    let (_server, addr) = setup.server();
    let device = setup.device(addr);
    wait_connected(addr);
    let (status, body) = send(addr, "hang", "");
    assert_eq!(status, 202, "{body}");
    let id = id_of(&body);
    wait_until(WAIT_SECS, "the program to start", || {
        setup.runs().len() == 1
    });
    // kill -9 (dropping a Proc): the device cannot end its program.
    drop(device);
    let program = setup.pids().concat();
    assert!(!gone(&program), "the program outlives a SIGKILLed device");
    assert_eq!(record(addr, id)["status"], "sent");

    // Restarted with its --state: it answers the re-sent command from its
    // record instead of running it, and ends what the old one left.
    let _device = setup.device(addr);
    let done = final_record(addr, id);
    assert_eq!(done["status"], "interrupted", "{done}");
    let text = done["reply"]["someOtherThing"].as_str().unwrap_or_default();
    assert!(text.starts_with("interrupted:"), "{done}");
    wait_until(WAIT_SECS, "the leftover program to be killed", || {
        gone(&program)
    });
    // The next command runs: once.
    let (status, next) = send(addr, "next", "?wait=10s");
    assert_eq!(
        (status, next["status"].as_str()),
        (200, Some("replied")),
        "{next}"
    );
    assert_eq!(
        setup.runs(),
        [format!("{id} hang"), format!("{} next", id + 1)]
    );
}

#[test]
fn a_stopped_device_makes_wait_answer_202_and_replies_after_sigcont() {
    let setup = Setup::new("sigstop");
    let (_server, addr) = setup.server();
    let device = setup.device(addr);
    wait_connected(addr);
    let pid = device.pid().to_string();
    assert!(kill("-STOP", &pid));
    let (status, body) = send(addr, "frozen", "?wait=1s");
    let resumed = kill("-CONT", &pid);
    assert!(resumed, "SIGCONT");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["status"], "sent", "{body}");
    let done = final_record(addr, id_of(&body));
    assert_eq!(done["status"], "replied", "{done}");
    assert_eq!(done["reply"]["someOtherThing"], "done: frozen\n");
    assert_eq!(setup.runs(), [format!("{} frozen", id_of(&body))]);
}

#[test]
fn kill_9_of_the_server_between_acknowledgement_and_delivery_delivers_once() {
    let setup = Setup::new("server-kill9");
    let (server, addr) = setup.server();
    let mut ids = Vec::new();
    for command in ["one", "two"] {
        let (status, body) = send(addr, command, "");
        assert_eq!(
            (status, body["status"].as_str()),
            (202, Some("queued")),
            "{body}"
        );
        ids.push(id_of(&body));
    }
    // kill -9 (dropping a Proc) right after the acknowledgements.
    drop(server);
    let (_server, addr) = setup.server();
    let _device = setup.device(addr);
    for (id, command) in ids.iter().zip(["one", "two"]) {
        let done = final_record(addr, *id);
        assert_eq!(done["status"], "replied", "{done}");
        assert_eq!(
            done["reply"]["someOtherThing"],
            format!("done: {command}\n")
        );
    }
    // The counter survived (the next id follows), and the queue was
    // delivered once: the next run is the third line.
    let (status, third) = send(addr, "three", "?wait=10s");
    assert_eq!(status, 200, "{third}");
    assert_eq!(id_of(&third), ids[1] + 1);
    let want: Vec<String> = ids
        .iter()
        .chain([&(ids[1] + 1)])
        .zip(["one", "two", "three"])
        .map(|(id, c)| format!("{id} {c}"))
        .collect();
    assert_eq!(setup.runs(), want);
}
