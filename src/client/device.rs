//! The client as a device that executes (`wsloop client --exec`): each
//! command the server pushes runs a program ([`exec`](super::exec)), one
//! at a time in order by default, and a named device runs each command at
//! most once ([`record`](super::record)).
//!
//! Two parts: the [`Device`] handler, on the connection's task, which
//! decides (in memory, at once) whether a command is new, a duplicate or
//! still running, and queues new ones; and the workers, which alone start
//! programs and send their replies through the client's session, so a
//! reply written while disconnected goes out after the reconnect. The
//! connection loop never waits for a program: it keeps reading, answering
//! pings and taking duplicates while one runs.

use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_channel::{Receiver, Sender};
use futures_lite::future;

use super::exec::{kill_leftovers, Program, DEFAULT_EXEC_TIMEOUT};
use super::record::{Record, Verdict};
use super::{run_with, ClientOptions, Event, Summary, PUSH_QUEUE};
use crate::{Error, Handler, Message, Peer, Session};

/// Programs that may run at once unless told otherwise: one, so commands
/// run in the order they were given.
pub const DEFAULT_EXEC_CONCURRENCY: usize = 1;

/// New commands that may wait for a free slot; past it the connection
/// stops reading (the server's own queue holds the rest).
const QUEUED_COMMANDS: usize = 1024;

/// In `--state DIR`: the notes naming running process groups.
const RUNNING_DIR: &str = "running";

/// What a device runs, and how ([`run_device`]).
#[derive(Debug, Clone)]
pub struct DeviceOptions {
    /// The program and its arguments, run once per command.
    pub exec: Vec<OsString>,
    /// How long one run may take ([`DEFAULT_EXEC_TIMEOUT`]); then its
    /// process group is killed and the reply is `success:false`.
    pub timeout: Duration,
    /// Programs that may run at once ([`DEFAULT_EXEC_CONCURRENCY`]).
    pub concurrency: usize,
    /// Keep the at-most-once record in this directory (needs
    /// [`ClientOptions::id`]); `None`: in memory.
    pub state: Option<PathBuf>,
    /// Also send the seed client's own requests (`interval`, `count`,
    /// `stdin`); a device only answers by default.
    pub requests: bool,
}

impl DeviceOptions {
    /// Runs `exec` (program, then arguments) with the defaults.
    pub fn new(exec: Vec<OsString>) -> Self {
        DeviceOptions {
            exec,
            timeout: DEFAULT_EXEC_TIMEOUT,
            concurrency: DEFAULT_EXEC_CONCURRENCY,
            state: None,
            requests: false,
        }
    }
}

/// One command to run, and where its reply goes.
struct Job {
    request: Message,
    /// The client's session, which outlives any one connection.
    session: Session,
}

/// The handler: admits each pushed command and queues new ones for the
/// workers. Owns nothing else.
struct Device {
    /// `None` for an anonymous device: its server numbers each connection's
    /// commands afresh, so an id says nothing about a duplicate.
    record: Option<Arc<Record>>,
    jobs: Sender<Job>,
    /// Every command pushed, for [`Event::Pushed`].
    pushes: Sender<Message>,
}

impl Handler for Device {
    async fn on_message(&self, peer: &Peer, message: Message) -> Option<Message> {
        let id = message.request_id;
        let verdict = match &self.record {
            Some(record) => record.admit(&message),
            None => Verdict::Run,
        };
        // A closed channel means nobody reports any more; still answer.
        let _ = self.pushes.send(message.clone()).await;
        match verdict {
            Verdict::Answer(reply) => {
                log::info!("requestID {id} again: its stored reply is sent again, not run twice");
                Some(reply)
            }
            Verdict::Wait => {
                log::info!("requestID {id} again: still running; its reply follows when done");
                None
            }
            Verdict::Run => {
                let session = peer.session().clone();
                // Waits while the queue is full: the connection stops reading.
                let _ = self
                    .jobs
                    .send(Job {
                        request: message,
                        session,
                    })
                    .await;
                None
            }
        }
    }
}

/// Runs the device: [`run`](super::run)'s client, whose pushed commands
/// each run `device.exec`; returns when the client stops, or closes it
/// (Close 1000) when `stop` completes (the binary's SIGINT/SIGTERM).
/// Running programs' process groups are killed on return, and if this
/// future is dropped.
pub async fn run_device(
    spawner: &impl crate::Spawn,
    options: &ClientOptions,
    device: &DeviceOptions,
    stop: impl std::future::Future<Output = ()>,
    report: impl FnMut(Event<'_>),
) -> Result<Summary, Error> {
    if device.exec.is_empty() {
        return Err(Error::Config("--exec needs a program".into()));
    }
    let record = open_record(options, device).await?;
    let program = Program {
        argv: device.exec.clone(),
        timeout: device.timeout,
        client: options.id.clone().unwrap_or_default(),
        running: device.state.as_ref().map(|dir| dir.join(RUNNING_DIR)),
    };
    let (pushes_tx, pushes) = async_channel::bounded(PUSH_QUEUE);
    let (jobs_tx, jobs) = async_channel::bounded(QUEUED_COMMANDS);
    let handler = Device {
        record: record.clone(),
        jobs: jobs_tx,
        pushes: pushes_tx,
    };
    let workers = async {
        work(jobs, record, program, device.concurrency.max(1)).await;
        future::pending().await
    };
    let client = run_with(
        spawner,
        options,
        handler,
        pushes,
        device.requests,
        stop,
        report,
    );
    future::or(client, workers).await
}

/// The record: durable with `--state`, in memory for a named device,
/// none for an anonymous one.
async fn open_record(
    options: &ClientOptions,
    device: &DeviceOptions,
) -> Result<Option<Arc<Record>>, Error> {
    match (&options.id, &device.state) {
        (None, Some(_)) => Err(Error::Config(
            "--state needs --id: only a named device's requestIDs are unique".into(),
        )),
        (None, None) => Ok(None),
        (Some(_), None) => Ok(Some(Arc::new(Record::in_memory()))),
        (Some(id), Some(dir)) => {
            let (dir, id) = (dir.clone(), id.clone());
            let record = blocking::unblock(move || {
                let record = Record::open(&dir, &id)?;
                // Once the record is ours (not another device's, not in use).
                kill_leftovers(&dir.join(RUNNING_DIR), &id);
                Ok::<_, Error>(record)
            })
            .await?;
            Ok(Some(Arc::new(record)))
        }
    }
}

/// `concurrency` workers taking jobs in order; each records, runs, records
/// and replies. Ends when the handler is gone.
async fn work(jobs: Receiver<Job>, record: Option<Arc<Record>>, program: Program, n: usize) {
    let workers = async_executor::LocalExecutor::new();
    let (done_tx, done) = async_channel::bounded::<()>(1);
    for _ in 0..n {
        let (jobs, record, program) = (jobs.clone(), record.clone(), program.clone());
        let done_tx = done_tx.clone();
        workers
            .spawn(async move {
                while let Ok(job) = jobs.recv().await {
                    run_job(job, record.as_ref(), &program).await;
                }
                drop(done_tx);
            })
            .detach();
    }
    drop(done_tx);
    // Dropping `workers` (with this future) drops the runs, killing them.
    workers
        .run(async { while done.recv().await.is_ok() {} })
        .await;
}

/// One command: recorded as started, run, its reply recorded, then sent.
async fn run_job(job: Job, record: Option<&Arc<Record>>, program: &Program) {
    let request = &job.request;
    let id = request.request_id;
    if let Some(record) = record {
        if let Err(why) = record.start(request).await {
            log::error!("requestID {id}: not run: {why}");
            let reply = Message::error_reply(id, format!("not run: {why}"));
            send(&job.session, reply);
            return;
        }
    }
    let reply = program.run(request).await;
    if let Some(record) = record {
        record.finish(request, &reply).await;
    }
    send(&job.session, reply);
}

/// Queues `reply` on the session; if it cannot be, the server's re-send
/// gets the stored reply.
fn send(session: &Session, reply: Message) {
    let id = reply.request_id;
    if let Err(e) = session.send(reply) {
        log::warn!("requestID {id}: reply not queued ({e}); a re-send gets it again");
    }
}
