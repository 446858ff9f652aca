//! Running one pushed command as a program (`wsloop client --exec`): the
//! command text on stdin, `WSLOOP_REQUEST_ID`, `WSLOOP_COMMAND` and
//! `WSLOOP_CLIENT` in the environment; the reply is `success` = exit
//! status 0 and `someOtherThing` = its stdout (the first
//! [`STDOUT_CAP`] bytes; the last [`STDERR_TAIL`] bytes of stderr too when
//! it failed).
//!
//! The program runs in a process group of its own, and that whole group
//! is killed (SIGKILL) when it times out, when it exits (so nothing it
//! left in the background lives on), and when the run is dropped (the
//! client exits). Processes are spawned and awaited with async-process,
//! so a running program never holds an executor thread.
//!
//! A device killed with SIGKILL cannot kill anything. With `--state`, each
//! running group is named in `DIR/running/<requestID>` while it runs, and
//! the next start kills the groups left there ([`kill_leftovers`]) —
//! after checking that they are still that command's processes.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use futures_lite::{future, AsyncReadExt, AsyncWriteExt};

use crate::time::{human, timeout};
use crate::Message;

/// How long a program may run before its process group is killed.
pub const DEFAULT_EXEC_TIMEOUT: Duration = Duration::from_secs(60);

/// Bytes of the program's stdout that go into the reply (a reply is one
/// WebSocket message; a chatty program must not make it huge).
pub const STDOUT_CAP: usize = 4096;

/// Bytes of the end of stderr that go into a failure's reply: where
/// programs say what went wrong.
pub const STDERR_TAIL: usize = 1024;

/// Longest command passed in `WSLOOP_COMMAND`: Linux refuses a single
/// environment string over 128 KiB (the whole `exec` would fail), and
/// stdin carries the command whole anyway.
const ENV_COMMAND_MAX: usize = 32 * 1024;

/// The program a device runs for each command, and how.
#[derive(Debug, Clone)]
pub(crate) struct Program {
    /// The program and its arguments (`argv[0]` is looked up in `PATH`).
    pub argv: Vec<OsString>,
    /// [`DEFAULT_EXEC_TIMEOUT`] unless told otherwise.
    pub timeout: Duration,
    /// `WSLOOP_CLIENT`: the device's `--id`, empty when anonymous.
    pub client: String,
    /// `--state DIR/running`: where running groups are named.
    pub running: Option<PathBuf>,
}

/// How a run ended, before it becomes a reply.
enum Outcome {
    Exited(std::process::ExitStatus),
    TimedOut,
    Failed(std::io::Error),
}

impl Program {
    /// Runs the program for `request` and returns the reply to send.
    pub async fn run(&self, request: &Message) -> Message {
        let started = Instant::now();
        let mut child = match self.command(request).spawn() {
            Ok(child) => child,
            Err(err) => {
                let why = format!("cannot run {:?}: {err}", self.argv[0]);
                return failure(request.request_id, String::new(), why, &[]);
            }
        };
        // Killed with everything it started, however this run ends.
        let mut group = Group {
            pgid: child.id(),
            note: None,
        };
        group.note = self.note_running(request.request_id, child.id()).await;
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let outcome = self
            .talk(&mut child, &request.command, &mut out, &mut err)
            .await;
        drop(group);
        let id = request.request_id;
        let took = human(started.elapsed());
        match outcome {
            Outcome::Exited(status) if status.success() => {
                log::info!("requestID {id}: exit status 0 after {took}");
                Message {
                    request_id: id,
                    some_other_thing: text(&out),
                    success: true,
                    ..Message::default()
                }
            }
            Outcome::Exited(status) => {
                let why = describe(status);
                log::info!("requestID {id}: {why} after {took}");
                failure(id, text(&out), why, &err)
            }
            Outcome::TimedOut => {
                let why = format!(
                    "timed out after {}; its process group was killed",
                    human(self.timeout)
                );
                log::warn!("requestID {id}: {why}");
                failure(id, text(&out), why, &err)
            }
            Outcome::Failed(e) => failure(id, text(&out), format!("waiting for it: {e}"), &err),
        }
    }

    /// The command line, environment and pipes for `request`, in a new
    /// process group so the group can be killed as one.
    fn command(&self, request: &Message) -> async_process::Command {
        let mut command = std::process::Command::new(&self.argv[0]);
        command
            .args(&self.argv[1..])
            .env("WSLOOP_REQUEST_ID", request.request_id.to_string())
            .env("WSLOOP_CLIENT", &self.client);
        // A NUL cannot be in an environment string; stdin has it whole.
        let text = &request.command;
        if text.len() <= ENV_COMMAND_MAX && !text.contains('\0') {
            command.env("WSLOOP_COMMAND", text);
        } else {
            command.env_remove("WSLOOP_COMMAND");
        }
        #[cfg(unix)]
        std::os::unix::process::CommandExt::process_group(&mut command, 0);
        let mut command = async_process::Command::from(command);
        command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        command
    }

    /// Feeds `text` to stdin and collects stdout into `out` and stderr's
    /// tail into `err` while waiting for the exit, within the timeout.
    /// The buffers are the caller's so a timed-out run keeps its output.
    async fn talk(
        &self,
        child: &mut async_process::Child,
        text: &str,
        out: &mut Vec<u8>,
        err: &mut Vec<u8>,
    ) -> Outcome {
        let (stdin, stdout, stderr) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let pid = child.id();
        let feed = async move {
            if let Some(mut stdin) = stdin {
                // A program that does not read its input is not an error.
                let _ = stdin.write_all(text.as_bytes()).await;
                let _ = stdin.close().await;
            }
        };
        let exit = async {
            let status = child.status().await;
            // Whatever it left in the background would hold the pipes
            // open; it goes with the program.
            kill_group(pid);
            status
        };
        let io = future::zip(feed, future::zip(head(stdout, out), tail(stderr, err)));
        match timeout(self.timeout, future::zip(exit, io)).await {
            Some((Ok(status), _)) => Outcome::Exited(status),
            Some((Err(e), _)) => Outcome::Failed(e),
            None => Outcome::TimedOut,
        }
    }
}

/// Kills a program's process group when dropped.
struct Group {
    pgid: u32,
    /// Its `DIR/running/<requestID>` file, removed with it.
    note: Option<PathBuf>,
}

impl Drop for Group {
    fn drop(&mut self) {
        kill_group(self.pgid);
        if let Some(note) = &self.note {
            // One unlink of a small file (no sync): not worth a thread.
            let _ = std::fs::remove_file(note);
        }
    }
}

impl Program {
    /// With `--state`, names the running group `pgid` in
    /// `DIR/running/<id>` so that a restart after SIGKILL can end it.
    async fn note_running(&self, id: i64, pgid: u32) -> Option<PathBuf> {
        let note = self.running.as_ref()?.join(id.to_string());
        let path = note.clone();
        let written = blocking::unblock(move || {
            std::fs::create_dir_all(path.parent().unwrap_or(Path::new(".")))?;
            std::fs::write(&path, pgid.to_string())
        })
        .await;
        match written {
            Ok(()) => Some(note),
            Err(e) => {
                log::warn!("requestID {id}: cannot note its process group: {e}");
                None
            }
        }
    }
}

/// At start: kills the process groups a SIGKILLed run of this device left
/// in `running` (`DIR/running`), each only if one of its processes still
/// carries that command's `WSLOOP_REQUEST_ID` and `WSLOOP_CLIENT` (a
/// recycled group id is left alone), and removes the notes. Blocking.
pub(crate) fn kill_leftovers(running: &Path, client: &str) {
    let Ok(notes) = std::fs::read_dir(running) else {
        return;
    };
    for note in notes.flatten() {
        let path = note.path();
        let id = note.file_name().to_string_lossy().into_owned();
        let pgid = std::fs::read_to_string(&path)
            .ok()
            .and_then(|text| text.trim().parse::<u32>().ok());
        if let Some(pgid) = pgid.filter(|&pgid| ours(pgid, &id, client)) {
            log::warn!("requestID {id}: its program outlived a killed device; killing its process group {pgid}");
            kill_group(pgid);
        }
        let _ = std::fs::remove_file(&path);
    }
}

/// Whether some process in group `pgid` has this command's environment.
#[cfg(target_os = "linux")]
fn ours(pgid: u32, id: &str, client: &str) -> bool {
    let wanted = [
        format!("WSLOOP_REQUEST_ID={id}"),
        format!("WSLOOP_CLIENT={client}"),
    ];
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return false;
    };
    procs.flatten().any(|entry| {
        let dir = entry.path();
        // `pid (comm) state ppid pgrp ...`: comm may hold spaces, so
        // count from the last ')'.
        let in_group = std::fs::read_to_string(dir.join("stat")).is_ok_and(|stat| {
            let fields = stat.rsplit(')').next().unwrap_or("");
            fields.split_whitespace().nth(2) == Some(pgid.to_string().as_str())
        });
        in_group
            && std::fs::read(dir.join("environ")).is_ok_and(|environ| {
                let vars: Vec<&[u8]> = environ.split(|&b| b == 0).collect();
                wanted.iter().all(|w| vars.contains(&w.as_bytes()))
            })
    })
}

/// Elsewhere there is no `/proc` to check with: leave it.
#[cfg(not(target_os = "linux"))]
fn ours(_: u32, _: &str, _: &str) -> bool {
    false
}

/// SIGKILL to the process group `pgid` (the program's pid: it leads the
/// group). A group that is already gone is fine.
#[cfg(target_os = "linux")]
fn kill_group(pgid: u32) {
    use rustix::process::{kill_process_group, Pid, Signal};
    if let Some(pid) = i32::try_from(pgid).ok().and_then(Pid::from_raw) {
        let _ = kill_process_group(pid, Signal::KILL);
    }
}

/// Elsewhere only the program itself is killed (async-process's
/// `kill_on_drop`), not what it started.
#[cfg(not(target_os = "linux"))]
fn kill_group(_: u32) {}

/// Reads `pipe` to its end, keeping the first [`STDOUT_CAP`] bytes in
/// `out`: the rest is read and dropped, so the program never blocks on a
/// full pipe.
async fn head(pipe: Option<async_process::ChildStdout>, out: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
        let room = STDOUT_CAP.saturating_sub(out.len());
        out.extend_from_slice(&chunk[..n.min(room)]);
    }
}

/// Reads `pipe` to its end, keeping its last [`STDERR_TAIL`] bytes in `err`.
async fn tail(pipe: Option<async_process::ChildStderr>, err: &mut Vec<u8>) {
    let Some(mut pipe) = pipe else { return };
    let mut chunk = [0u8; 4096];
    while let Ok(n @ 1..) = pipe.read(&mut chunk).await {
        err.extend_from_slice(&chunk[..n]);
        if err.len() > STDERR_TAIL {
            err.drain(..err.len() - STDERR_TAIL);
        }
    }
}

/// Output as reply text (invalid UTF-8, or a character cut at the cap,
/// becomes U+FFFD).
fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// `exit status 3`, or `killed by signal 9`.
fn describe(status: std::process::ExitStatus) -> String {
    #[cfg(unix)]
    if let Some(signal) = std::os::unix::process::ExitStatusExt::signal(&status) {
        return format!("killed by signal {signal}");
    }
    match status.code() {
        Some(code) => format!("exit status {code}"),
        None => status.to_string(),
    }
}

/// A failed run's reply: `success:false`; `someOtherThing` is stdout, then
/// why, then stderr's tail; `error` says why too, which is also what marks
/// a `success:false` message as a reply (see `Session` routing).
fn failure(id: i64, stdout: String, why: String, stderr: &[u8]) -> Message {
    let mut text = stdout;
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    text.push_str(&why);
    let stderr = String::from_utf8_lossy(stderr);
    let stderr = stderr.trim_end();
    if !stderr.is_empty() {
        text.push_str("; stderr: ");
        text.push_str(stderr);
    }
    Message {
        request_id: id,
        some_other_thing: text,
        success: false,
        error: why,
        ..Message::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_says_why_after_stdout_and_before_stderr() {
        let reply = failure(4, "partial".into(), "exit status 3".into(), b"bad disk\n");
        assert_eq!(
            reply.some_other_thing,
            "partial\nexit status 3; stderr: bad disk"
        );
        assert_eq!(reply.error, "exit status 3");
        assert!(!reply.success && reply.command.is_empty());
    }
}
