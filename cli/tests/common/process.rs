//! Shared child-process harness for the tests that run real programs (the
//! `wsloop` binary, the Go reference peer): a [`Proc`] whose stdout and
//! stderr lines arrive on channels, so every wait is bounded
//! (`recv_timeout`), and which is killed and reaped on drop, so no test
//! leaves a process behind. Also [`start_server`], which starts
//! `wsloop ... --address 127.0.0.1:0` and reads back the address it chose.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

/// The `wsloop` binary Cargo built for these tests.
pub const BIN: &str = env!("CARGO_BIN_EXE_wsloop");

/// The first line `wsloop server` prints, up to the address.
pub const ANNOUNCE: &str = "wsloop server on http://";

/// The prefix of every reply line the clients print.
pub const RECEIVED: &str = "Received from server: ";

/// Reads `pipe` line by line on a thread; the channel disconnects at EOF.
fn lines_of(pipe: impl Read + Send + 'static) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        for line in BufReader::new(pipe).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Which of a child's output pipes a wait reads.
#[derive(Clone, Copy)]
enum Pipe {
    Stdout,
    Stderr,
}

impl Pipe {
    /// The pipe's name in failure messages.
    fn name(self) -> &'static str {
        match self {
            Pipe::Stdout => "stdout",
            Pipe::Stderr => "stderr",
        }
    }
}

/// A child process whose stdout and stderr lines arrive on channels.
/// Dropping it kills and reaps the process, so no test leaves one behind.
pub struct Proc {
    name: String,
    child: Child,
    stdout: Receiver<String>,
    stderr: Receiver<String>,
    out_seen: Vec<String>,
    err_seen: Vec<String>,
}

/// How a process ended and everything it printed.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: Vec<String>,
    pub stderr: Vec<String>,
}

impl Finished {
    /// Whether the process ended the way a wsloop server ends on SIGTERM in
    /// this build: a clean exit with the `signals` feature, killed by the
    /// signal without it.
    pub fn stopped_by_sigterm(&self) -> bool {
        use std::os::unix::process::ExitStatusExt;
        if cfg!(feature = "signals") {
            self.status.success()
        } else {
            self.status.signal() == Some(15)
        }
    }
}

impl Proc {
    /// Starts `program ARGS`; `input`, when given, is written to its stdin,
    /// which is then closed (otherwise stdin is /dev/null).
    pub fn spawn(name: &str, program: &OsStr, args: &[&OsStr], input: Option<&str>) -> Proc {
        Proc::spawn_env(name, program, args, &[], input)
    }

    /// [`Proc::spawn`] with environment changes: `(NAME, Some(value))`
    /// sets, `(NAME, None)` removes.
    pub fn spawn_env(
        name: &str,
        program: &OsStr,
        args: &[&OsStr],
        env: &[(&str, Option<&str>)],
        input: Option<&str>,
    ) -> Proc {
        let mut command = Command::new(program);
        for (key, value) in env {
            match value {
                Some(value) => command.env(key, value),
                None => command.env_remove(key),
            };
        }
        let mut child = command
            .args(args)
            .stdin(if input.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({program:?} {args:?}): {e}"));
        if let Some(input) = input {
            let mut stdin = child.stdin.take().expect("stdin was piped");
            stdin
                .write_all(input.as_bytes())
                .unwrap_or_else(|e| panic!("writing {name}'s stdin: {e}"));
            // Dropping `stdin` closes it: the child sees end of input.
        }
        let stdout = lines_of(child.stdout.take().expect("stdout was piped"));
        let stderr = lines_of(child.stderr.take().expect("stderr was piped"));
        Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
            out_seen: Vec::new(),
            err_seen: Vec::new(),
        }
    }

    /// Starts `wsloop ARGS`, with `input` as for [`Proc::spawn`].
    pub fn wsloop(name: &str, args: &[&str], input: Option<&str>) -> Proc {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        Proc::spawn(name, OsStr::new(BIN), &args, input)
    }

    /// Starts `wsloop ARGS` with environment changes (see [`Proc::spawn_env`]).
    pub fn wsloop_env(name: &str, args: &[&str], env: &[(&str, Option<&str>)]) -> Proc {
        let args: Vec<&OsStr> = args.iter().map(OsStr::new).collect();
        Proc::spawn_env(name, OsStr::new(BIN), &args, env, None)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM (through kill(1): the tests use std only).
    pub fn sigterm(&self) {
        let pid = self.pid().to_string();
        assert!(kill("-TERM", &pid), "kill -TERM {} failed", self.name);
    }

    /// Moves whatever stderr has printed so far into `err_seen`.
    pub fn collect_stderr(&mut self) {
        while let Ok(line) = self.stderr.try_recv() {
            self.err_seen.push(line);
        }
    }

    /// Everything seen so far, for failure messages.
    pub fn context(&mut self) -> String {
        self.collect_stderr();
        format!(
            "{} stdout so far: {:#?}\n{} stderr so far: {:#?}",
            self.name, self.out_seen, self.name, self.err_seen
        )
    }

    /// Fails the test with `what` and everything the process printed.
    pub fn fail(&mut self, what: &str) -> ! {
        let context = self.context();
        panic!("{}: {what}\n{context}", self.name)
    }

    /// The next stdout line, or `None` at end of output; fails the test at
    /// `deadline`.
    pub fn next_line(&mut self, deadline: Instant) -> Option<String> {
        self.read_line(Pipe::Stdout, deadline, "no stdout line in time")
    }

    /// Reads stdout until a line satisfies `wanted`, within `secs` seconds.
    pub fn wait_for_line(
        &mut self,
        secs: u64,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_for(Pipe::Stdout, secs, what, wanted)
    }

    /// Reads stderr until a line satisfies `wanted`, within `secs` seconds;
    /// every line read stays in [`Proc::stderr_seen`].
    pub fn wait_for_stderr(
        &mut self,
        secs: u64,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        self.wait_for(Pipe::Stderr, secs, what, wanted)
    }

    /// The one bounded read every wait goes through: the next line of
    /// `pipe` before `deadline`, kept among that pipe's lines seen; `None`
    /// once the pipe is closed; fails the test with `late` at the deadline.
    fn read_line(&mut self, pipe: Pipe, deadline: Instant, late: &str) -> Option<String> {
        let (lines, seen) = match pipe {
            Pipe::Stdout => (&self.stdout, &mut self.out_seen),
            Pipe::Stderr => (&self.stderr, &mut self.err_seen),
        };
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) => {
                seen.push(line.clone());
                Some(line)
            }
            Err(RecvTimeoutError::Disconnected) => None,
            Err(RecvTimeoutError::Timeout) => self.fail(late),
        }
    }

    /// Reads `pipe` until a line satisfies `wanted`, within `secs` seconds.
    fn wait_for(
        &mut self,
        pipe: Pipe,
        secs: u64,
        what: &str,
        wanted: impl Fn(&str) -> bool,
    ) -> String {
        let deadline = Instant::now() + Duration::from_secs(secs);
        let late = format!("no {what} on {} in time", pipe.name());
        loop {
            match self.read_line(pipe, deadline, &late) {
                Some(line) if wanted(&line) => return line,
                Some(_) => continue,
                None => self.fail(&format!("{} ended before {what}", pipe.name())),
            }
        }
    }

    /// The stderr lines read so far.
    pub fn stderr_seen(&self) -> &[String] {
        &self.err_seen
    }

    /// Waits for the process to exit within `secs` seconds and returns its
    /// status with all of its output.
    pub fn finish(&mut self, secs: u64) -> Finished {
        let deadline = Instant::now() + Duration::from_secs(secs);
        // Both pipes reach EOF when the process exits: that is the signal.
        let late = format!("did not exit within {secs} s");
        while self.read_line(Pipe::Stdout, deadline, &late).is_some() {}
        while self.read_line(Pipe::Stderr, deadline, &late).is_some() {}
        // The pipes are closed, so the exit is at most moments away.
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(5)),
                Ok(None) => self.fail(&format!("output closed but no exit within {secs} s")),
                Err(e) => panic!("waiting for {}: {e}", self.name),
            }
        };
        Finished {
            status,
            stdout: self.out_seen.clone(),
            stderr: self.err_seen.clone(),
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        // Harmless if the process already exited and was reaped.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `wsloop ARGS --address 127.0.0.1:0` (as `name` in failure
/// messages) and returns it with the address parsed from its first stdout
/// line.
pub fn start_server(name: &str, args: &[&str]) -> (Proc, SocketAddr) {
    let mut all = args.to_vec();
    all.extend(["--address", "127.0.0.1:0"]);
    let mut server = Proc::wsloop(name, &all, None);
    let deadline = Instant::now() + Duration::from_secs(10);
    let first = server
        .next_line(deadline)
        .unwrap_or_else(|| server.fail("exited before announcing its address"));
    let addr = announced_addr(&first)
        .unwrap_or_else(|| server.fail(&format!("unexpected first line {first:?}")));
    (server, addr)
}

/// The address in `wsloop server`'s announcement, its first stdout line
/// (`wsloop server on http://ADDR/ (WebSocket at /server)`, `https://`
/// with TLS); `None` for any other line. Only the address is read, so a
/// build that words the rest differently (`WSLOOP_LOAD_BIN`) still parses.
pub fn announced_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.trim().strip_prefix("wsloop server on ")?;
    let rest = rest
        .strip_prefix("http://")
        .or_else(|| rest.strip_prefix("https://"))?;
    rest.split('/').next()?.parse().ok()
}

/// Sends `signal` (`-TERM`, `-STOP`, `-CONT`, `-9`) to `pid` through
/// kill(1) (the tests use std only); a negative pid is a process group.
/// Whether kill(1) delivered it: a process already gone is `false`.
pub fn kill(signal: &str, pid: &str) -> bool {
    Command::new("kill")
        .args([signal, "--", pid])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The JSON replies in a client's `Received from server:` lines.
pub fn replies(stdout: &[String]) -> Vec<serde_json::Value> {
    stdout
        .iter()
        .filter_map(|line| line.strip_prefix(RECEIVED))
        .map(|json| {
            serde_json::from_str(json).unwrap_or_else(|e| panic!("reply {json:?} is not JSON: {e}"))
        })
        .collect()
}

/// Whether process `pid` is gone (a zombie counts: it runs no more).
pub fn gone(pid: &str) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z')),
    }
}
