//! A handler that is not `Send`, on smol's `LocalExecutor`: the
//! [`LocalHandler`] trait and the bridge that serves it, [`Local`], plus
//! [`LocalSpawner`], a shareable spawner that runs tasks on a local
//! executor.
//!
//! Use it when the application is single-threaded and its state is
//! `Rc<RefCell<..>>`: a [`Handler`] must be `Send + Sync` (the server shares
//! it between connection tasks that may run on any thread), a
//! [`LocalHandler`] need not be. The connection loops stay the ordinary,
//! `Send` ones (one copy of them whatever the handler); only the handler's
//! code runs on the local executor:
//!
//! ```text
//!  connection task ──(peer, event, reply sender)──▶ channel ──▶ serving task
//!  (Send, any spawner)                                          on the LocalExecutor:
//!        ▲                                                      on_connect / on_disconnect inline,
//!        └──────────────── reply (one-shot channel) ◀────────── one local task per on_message
//! ```
//!
//! A connection awaits each reply before it reads its next frame, so one
//! connection's messages are answered in order, while a slow call never
//! holds up another connection's. `on_connect` and `on_disconnect` travel
//! the same channel, so they are ordered with that connection's messages.
//! The cost is one channel hop and a one-shot reply channel per message
//! (see the README for the figure).
//!
//! [`Local`]'s docs show a server and a client on a `LocalExecutor`.

use std::future::Future;
use std::io;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_channel::{Receiver, Sender};
use async_executor::LocalExecutor;
use async_tungstenite::tungstenite;
use futures_lite::future;

use crate::{BoxTask, Ended, Error, Handler, Peer, Protocol, Seed, Spawn};

/// What the application does with each inbound message, on a
/// `LocalExecutor`: [`Handler`]'s shape without its `Send` and `Sync`
/// bounds. Serve it through [`Local`].
///
/// Any `Fn(&Peer, Message) -> Option<Message>` closure is one, `Rc`s and
/// `RefCell`s welcome:
///
/// ```
/// use std::cell::Cell;
/// use std::rc::Rc;
/// use wsloop::{Message, Peer};
///
/// let count = Rc::new(Cell::new(0));
/// let counting = move |_: &Peer, request: Message| {
///     count.set(count.get() + 1);
///     Some(request.seed_reply())
/// };
/// # fn is_local_handler(_: impl wsloop::LocalHandler) {}
/// # is_local_handler(counting);
/// ```
pub trait LocalHandler<P: Protocol = Seed>: 'static {
    /// Handles one decoded message; `Some(reply)` is sent back to the peer.
    /// A call that has to wait goes on as a task of its own on the local
    /// executor, so it holds up no other connection.
    fn on_message(
        &self,
        peer: &Peer<P>,
        message: P::Message,
    ) -> impl Future<Output = Option<P::Message>>;

    /// Called once when a connection is established, before any of its
    /// messages; keep the [`Peer`] to push to it later. Does nothing by
    /// default.
    fn on_connect(&self, peer: &Peer<P>) {
        let _ = peer;
    }

    /// Called exactly once when a connection's loop has ended, after every
    /// one of its messages was handed to
    /// [`on_message`](LocalHandler::on_message), with how it ended. The
    /// error is a copy of the loop's (same variant and message; an i/o
    /// error keeps its kind, a WebSocket error its protocol fault where
    /// tungstenite lets it be copied). Does nothing by default.
    fn on_disconnect(&self, peer: &Peer<P>, how_it_ended: &Result<Ended, Error>) {
        let _ = (peer, how_it_ended);
    }
}

impl<P, F> LocalHandler<P> for F
where
    P: Protocol,
    F: Fn(&Peer<P>, P::Message) -> Option<P::Message> + 'static,
{
    fn on_message(
        &self,
        peer: &Peer<P>,
        message: P::Message,
    ) -> impl Future<Output = Option<P::Message>> {
        std::future::ready(self(peer, message))
    }
}

/// One call of the [`Handler`] on its way to the [`LocalHandler`].
enum Event<P: Protocol> {
    Connect(Peer<P>),
    /// The message and where its reply goes (a one-shot channel).
    Message(Peer<P>, P::Message, Sender<Option<P::Message>>),
    Disconnect(Peer<P>, Result<Ended, Error>),
}

/// A [`Handler`] (`Send + Sync`) that hands every call to a
/// [`LocalHandler`] running on a `LocalExecutor`: each call goes through a
/// channel to a task on that executor, which runs the hooks in the order
/// they come and each [`on_message`](LocalHandler::on_message) as a task of
/// its own (once it has to wait); the reply comes back on a one-shot
/// channel. One connection's
/// messages are answered in order (its loop awaits each reply), and a slow
/// call does not hold up the other connections.
///
/// ```no_run
/// use std::cell::RefCell;
/// use std::rc::Rc;
/// use wsloop::{Config, Local, LocalSpawner, Message, Peer, Server};
///
/// let ex = smol::LocalExecutor::new();
/// // Single-threaded state: every message this server saw.
/// let seen = Rc::new(RefCell::new(Vec::new()));
/// let log = seen.clone();
/// let handler = move |_: &Peer, request: Message| {
///     log.borrow_mut().push(request.command.clone());
///     Some(request.seed_reply())
/// };
/// smol::block_on(ex.run(async {
///     let server = Server::bind("127.0.0.1:8080", Config::default()).await?;
///     // The connection tasks on `ex` too, through a spawner that can be
///     // shared (a `LocalExecutor` cannot).
///     let spawner = LocalSpawner::new(&ex);
///     server.run(&spawner, Local::new(&ex, handler), std::future::pending()).await
/// }))?;
/// # Ok::<(), wsloop::Error>(())
/// ```
///
/// A [`Client`](crate::client::Client) takes the `LocalExecutor` itself as
/// its spawner: `Client::connect(&ex, options, Local::new(&ex, handler))`.
/// The connection tasks may also run elsewhere (a multi-threaded
/// executor): the handler's code still runs on the thread that drives the
/// `LocalExecutor`.
///
/// Once that executor is gone (dropped, with the task serving the
/// handler), the bridge answers nothing (`None`) and logs it once; it
/// never panics. Clones share the one local handler.
pub struct Local<P: Protocol = Seed> {
    /// Into the task on the local executor that runs the handler.
    events: Sender<Event<P>>,
    /// Whether "the local handler is gone" was logged already.
    gone_logged: Arc<AtomicBool>,
}

impl<P: Protocol> Clone for Local<P> {
    fn clone(&self) -> Self {
        Local {
            events: self.events.clone(),
            gone_logged: self.gone_logged.clone(),
        }
    }
}

impl<P: Protocol> Local<P> {
    /// Serves `handler` from a task spawned on `executor`; the bridge
    /// returned is the [`Handler`] to give the server or the client.
    ///
    /// ```
    /// use wsloop::{Local, Message, Peer};
    ///
    /// let ex = smol::LocalExecutor::new();
    /// let seed = |_: &Peer, request: Message| Some(request.seed_reply());
    /// let bridge: Local = Local::new(&ex, seed);
    /// # fn is_handler(_: impl wsloop::Handler) {}
    /// # is_handler(bridge);
    /// ```
    pub fn new<H: LocalHandler<P>>(executor: &LocalExecutor<'_>, handler: H) -> Self {
        // Unbounded, yet bounded in practice: a connection has at most one
        // message in flight (it awaits the reply) plus its connect and
        // disconnect, and those two cannot wait (their hooks are not async).
        let (events, inbox) = async_channel::unbounded();
        executor.spawn(serve(inbox, handler)).detach();
        Local {
            events,
            gone_logged: Arc::default(),
        }
    }

    /// Hands `event` to the local side; false (logged once) if it is gone.
    fn deliver(&self, event: Event<P>) -> bool {
        if self.events.try_send(event).is_ok() {
            return true;
        }
        self.log_gone();
        false
    }

    /// Says once per bridge that the local side went away.
    fn log_gone(&self) {
        if !self.gone_logged.swap(true, Ordering::Relaxed) {
            log::warn!(
                "the local handler is gone (its LocalExecutor was dropped); \
                 messages are no longer answered"
            );
        }
    }
}

impl<P: Protocol> Handler<P> for Local<P> {
    async fn on_message(&self, peer: &Peer<P>, message: P::Message) -> Option<P::Message> {
        // One slot: the local task sends exactly one answer.
        let (reply, answer) = async_channel::bounded(1);
        if !self.deliver(Event::Message(peer.clone(), message, reply)) {
            return None;
        }
        match answer.recv().await {
            Ok(answer) => answer,
            // The call was dropped unanswered: its executor is gone.
            Err(_) => {
                self.log_gone();
                None
            }
        }
    }

    fn on_connect(&self, peer: &Peer<P>) {
        self.deliver(Event::Connect(peer.clone()));
    }

    fn on_disconnect(&self, peer: &Peer<P>, how_it_ended: &Result<Ended, Error>) {
        let how = match how_it_ended {
            Ok(ended) => Ok(ended.clone()),
            Err(err) => Err(copy_error(err)),
        };
        self.deliver(Event::Disconnect(peer.clone(), how));
    }
}

/// The task on the local executor that owns the handler: the hooks run in
/// the order they arrive, each message in a task of its own. Ends when
/// every bridge is dropped and the calls still running have finished.
async fn serve<P: Protocol, H: LocalHandler<P>>(inbox: Receiver<Event<P>>, handler: H) {
    let handler = Rc::new(handler);
    // The calls' own executor, inside this task: a task on the caller's
    // executor cannot spawn onto it (it would have to borrow it).
    let calls = LocalExecutor::new();
    calls
        .run(async {
            while let Ok(event) = inbox.recv().await {
                match event {
                    Event::Connect(peer) => handler.on_connect(&peer),
                    Event::Message(peer, message, reply) => {
                        let handler = handler.clone();
                        let call = async move {
                            let answer = handler.on_message(&peer, message).await;
                            // The one slot is free; a closed channel means the
                            // connection stopped waiting.
                            let _ = reply.try_send(answer);
                        };
                        // Most calls finish without waiting: answer those
                        // here, and give the rest a task of their own.
                        let mut call = Box::pin(call);
                        if future::poll_once(&mut call).await.is_none() {
                            calls.spawn(call).detach();
                        }
                    }
                    Event::Disconnect(peer, how) => handler.on_disconnect(&peer, &how),
                }
            }
        })
        .await;
    finish(&calls).await;
}

/// Runs `executor` until its last task has finished.
async fn finish(executor: &LocalExecutor<'_>) {
    while !executor.is_empty() {
        executor.tick().await;
    }
}

/// A copy of `err` for the local side (the hook gets a reference, the
/// channel needs a value, and neither `io::Error` nor tungstenite's error
/// is `Clone`): the same variant and message.
fn copy_error(err: &Error) -> Error {
    match err {
        Error::Io(e) => Error::Io(io::Error::new(e.kind(), e.to_string())),
        Error::WebSocket(e) => copy_websocket_error(e),
        Error::Handshake(why) => Error::Handshake(why.clone()),
        Error::Refused { status, reason } => Error::Refused {
            status: *status,
            reason: reason.clone(),
        },
        Error::Tls(why) => Error::Tls(why.clone()),
        Error::Timeout(what) => Error::Timeout(what),
        Error::Config(why) => Error::Config(why.clone()),
        Error::Policy(why) => Error::Policy(why.clone()),
        Error::ProtocolViolation(how) => Error::ProtocolViolation(how),
        Error::ConnectionClosed(how) => Error::ConnectionClosed(how.clone()),
    }
}

/// tungstenite's error where it can be copied; its message as an i/o error
/// otherwise (the handshake and URL variants, which a loop never returns).
fn copy_websocket_error(err: &tungstenite::Error) -> Error {
    use tungstenite::Error as E;
    let copy = match err {
        E::ConnectionClosed => E::ConnectionClosed,
        E::AlreadyClosed => E::AlreadyClosed,
        E::Io(e) => E::Io(io::Error::new(e.kind(), e.to_string())),
        E::Capacity(e) => E::Capacity(*e),
        E::Protocol(e) => E::Protocol(e.clone()),
        E::WriteBufferFull(frame) => E::WriteBufferFull(frame.clone()),
        E::Utf8(e) => E::Utf8(e.clone()),
        E::AttackAttempt => E::AttackAttempt,
        other => return Error::Io(io::Error::other(other.to_string())),
    };
    Error::WebSocket(copy)
}

/// A [`Spawn`]er that runs every task on a `LocalExecutor` and, unlike the
/// executor itself, can be shared between threads: what
/// [`Server::run`](crate::Server::run) needs to keep for its accept loop.
/// Clones feed the same executor.
///
/// The tasks run inside one task spawned on that executor (its own small
/// executor, so the caller's need not be borrowed for `'static`). They
/// keep running after the last spawner is dropped; when the
/// `LocalExecutor` is dropped they are cancelled, and tasks spawned after
/// that are dropped unrun.
#[derive(Clone)]
pub struct LocalSpawner {
    /// Into the task on the local executor that spawns them.
    tasks: Sender<BoxTask>,
}

impl LocalSpawner {
    /// A spawner onto `executor`.
    ///
    /// ```
    /// let ex = smol::LocalExecutor::new();
    /// let spawner = wsloop::LocalSpawner::new(&ex);
    /// # fn shareable(_: impl wsloop::Spawn + Clone + Send + Sync + 'static) {}
    /// # shareable(spawner);
    /// ```
    pub fn new(executor: &LocalExecutor<'_>) -> Self {
        // Unbounded: spawning never waits (a spawner must not block).
        let (tasks, inbox) = async_channel::unbounded::<BoxTask>();
        executor
            .spawn(async move {
                let spawned = LocalExecutor::new();
                spawned
                    .run(async {
                        while let Ok(task) = inbox.recv().await {
                            spawned.spawn(task).detach();
                        }
                    })
                    .await;
                finish(&spawned).await;
            })
            .detach();
        LocalSpawner { tasks }
    }
}

impl Spawn for LocalSpawner {
    fn spawn(&self, task: BoxTask) {
        // Closed only when the executor is gone: the task is dropped, which
        // cancels it, as that executor would have.
        let _ = self.tasks.try_send(task);
    }
}
