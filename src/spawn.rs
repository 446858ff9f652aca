//! What the server and the client spawn their tasks on: [`Spawn`], anything
//! that can run a future in the background.
//!
//! wsloop never spawns on a hidden global executor: [`Server::run`] and
//! [`Client::connect`] take a spawner. It is implemented for smol's
//! executor (`smol::Executor` is `async_executor::Executor`, so both
//! spellings work), for `Arc`s of spawners, for smol's `LocalExecutor`
//! (where the spawner need not be kept or shared, as by
//! [`Client::connect`]; [`LocalSpawner`](crate::LocalSpawner) is a
//! shareable one onto a `LocalExecutor`, for [`Server::run`], and
//! [`Local`](crate::Local) serves a handler that is not `Send` there), and
//! for any closure taking a [`BoxTask`], which covers every other runtime:
//!
//! ```no_run
//! # async fn demo(server: wsloop::Server) -> Result<(), wsloop::Error> {
//! use wsloop::{BoxTask, Message, Peer};
//!
//! // On tokio (for example): each task goes to tokio::spawn.
//! # fn tokio_spawn(_: BoxTask) {}
//! let spawner = |task: BoxTask| tokio_spawn(task);
//! let handler = |_: &Peer, request: Message| Some(request.seed_reply());
//! server.run(&spawner, handler, std::future::pending()).await
//! # }
//! ```
//!
//! The tasks come boxed so that the server and client code is compiled
//! once, not once per spawner type (the small build has one copy of the
//! accept loop and of the connection task whatever it spawns on).
//!
//! [`Server::run`]: crate::Server::run
//! [`Client::connect`]: crate::client::Client::connect

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

/// A task as wsloop hands it to a [`Spawn`]er: a boxed, `Send`,
/// `'static` future that must be polled to completion (or dropped, which
/// cancels it).
pub type BoxTask = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// Runs tasks in the background: an executor, or a handle to one.
///
/// A spawner must not block and must not poll the task inline (the caller
/// may hold state the task waits for). It may run the task on any thread.
///
/// A single-threaded application on smol's `LocalExecutor` passes the
/// executor itself to [`Client::connect`](crate::client::Client::connect),
/// a [`LocalSpawner`](crate::LocalSpawner) to
/// [`Server::run`](crate::Server::run) (which keeps it), and serves a
/// handler that is not `Send` through [`Local`](crate::Local).
pub trait Spawn {
    /// Starts `task`; it runs detached until it completes.
    fn spawn(&self, task: BoxTask);
}

impl Spawn for async_executor::Executor<'_> {
    fn spawn(&self, task: BoxTask) {
        async_executor::Executor::spawn(self, task).detach();
    }
}

impl Spawn for async_executor::LocalExecutor<'_> {
    fn spawn(&self, task: BoxTask) {
        async_executor::LocalExecutor::spawn(self, task).detach();
    }
}

impl<S: Spawn + ?Sized> Spawn for Arc<S> {
    fn spawn(&self, task: BoxTask) {
        (**self).spawn(task);
    }
}

/// Any `Fn(BoxTask)`: `|task| { tokio::spawn(task); }`, a thread pool's
/// submit, a test's task list.
impl<F: Fn(BoxTask)> Spawn for F {
    fn spawn(&self, task: BoxTask) {
        self(task);
    }
}

/// A spawner the accept task can keep: shared, any thread.
pub(crate) type SharedSpawn = Arc<dyn Spawn + Send + Sync>;
