//! What the application plugs into the loop: the [`Handler`] trait, its
//! impls for closures, channels and `Arc`, and the seed's [`SeedHandler`].
//! The default [`Handler::on_frame`] is where inbound JSON is decoded and
//! replies to our own requests are routed off to the session.

use std::future::Future;
use std::sync::Arc;

use async_channel::Sender;
use async_tungstenite::tungstenite::Message as Frame;
use futures_lite::future;

use super::Peer;
use crate::wire::codec;
use crate::{Ended, Error, Message};

/// What the application does with each inbound message.
///
/// The connection loop awaits [`Handler::on_message`] before it reads the
/// next frame, so replies go out in request order. Work that takes long
/// should be spawned elsewhere and answered later through [`Peer::send`].
///
/// Any `Fn(&Peer, Message) -> Option<Message>` closure is a handler:
///
/// ```
/// use wsloop::{Message, Peer};
/// let seed = |_: &Peer, request: Message| Some(request.seed_reply());
/// # fn is_handler(_: impl wsloop::Handler) {}
/// # is_handler(seed);
/// ```
///
/// An [`async_channel::Sender<Message>`] is a handler too: it forwards every
/// inbound message into the channel (waiting while it is full) and replies
/// nothing. That is the client's "reader task feeds a channel" pattern.
pub trait Handler: Send + Sync + 'static {
    /// Handles one decoded message; `Some(reply)` is sent back to the peer.
    fn on_message(
        &self,
        peer: &Peer,
        message: Message,
    ) -> impl Future<Output = Option<Message>> + Send;

    /// Called once when a connection is established, before its loop
    /// starts; keep the [`Peer`] to push to it later. Does nothing by default.
    ///
    /// Called on both sides: by the server for each accepted connection,
    /// by the client for each connection it (re)establishes.
    fn on_connect(&self, peer: &Peer) {
        let _ = peer;
    }

    /// Called exactly once when a connection's loop has ended, on both
    /// sides, with how it ended (`Ok` a normal end, `Err` a failure); for
    /// every [`on_connect`](Handler::on_connect) there is one call. The
    /// [`Peer`] is already closed. Does nothing by default.
    fn on_disconnect(&self, peer: &Peer, how_it_ended: &Result<Ended, Error>) {
        let _ = (peer, how_it_ended);
    }

    /// Handles one raw data frame (text or binary); `Some(frame)` is sent
    /// back. The default decodes the JSON message, calls
    /// [`on_message`](Handler::on_message) and encodes its reply; a
    /// malformed message gets an error reply (with the fault's position) and
    /// the connection lives on. Override it only to speak something other
    /// than the JSON protocol (the echo example does).
    fn on_frame(&self, peer: &Peer, frame: Frame) -> impl Future<Output = Option<Frame>> + Send {
        async move {
            // Text and binary frames carry the same JSON.
            let bytes: &[u8] = match &frame {
                Frame::Text(text) => text.as_bytes(),
                Frame::Binary(bytes) => bytes,
                _ => return None,
            };
            log::debug!("{peer} -> {}", crate::log_safe::body(bytes));
            let reply = match codec::decode(bytes) {
                Ok(message) => {
                    // Replies complete our own outstanding requests; only
                    // requests reach the handler.
                    let request = peer.session().route(message, peer)?;
                    self.on_message(peer, request).await
                }
                Err(err) => {
                    crate::log_safe::malformed(peer, &err);
                    let id = err.request_id.unwrap_or(0);
                    Some(Message::error_reply(id, err.to_string()))
                }
            };
            reply.map(|reply| {
                let text = codec::encode(&reply);
                log::debug!("{peer} <- {}", crate::log_safe::body(text.as_bytes()));
                Frame::text(text)
            })
        }
    }
}

impl<F> Handler for F
where
    F: Fn(&Peer, Message) -> Option<Message> + Send + Sync + 'static,
{
    fn on_message(
        &self,
        peer: &Peer,
        message: Message,
    ) -> impl Future<Output = Option<Message>> + Send {
        future::ready(self(peer, message))
    }
}

impl Handler for Sender<Message> {
    async fn on_message(&self, _peer: &Peer, message: Message) -> Option<Message> {
        // A closed channel means nobody listens any more; drop the message.
        let _ = self.send(message).await;
        None
    }
}

/// The original program's handler, on either side: answers every message
/// with [`Message::seed_reply`]. Built with [`SeedHandler::forwarding`], it
/// also passes each message it answered on to a channel (the seed client
/// prints the commands the server pushes that way).
///
/// The `wsloop` binary uses this one type for its server and its client, so
/// it carries one copy of the connection loop, which is generic over its
/// handler, instead of two.
#[derive(Debug, Clone, Default)]
pub struct SeedHandler {
    forward: Option<Sender<Message>>,
}

impl SeedHandler {
    /// Answers like the seed and forwards each message into `channel`
    /// (waiting while it is full).
    pub fn forwarding(channel: Sender<Message>) -> Self {
        SeedHandler {
            forward: Some(channel),
        }
    }
}

impl Handler for SeedHandler {
    async fn on_message(&self, _peer: &Peer, message: Message) -> Option<Message> {
        let reply = message.seed_reply();
        if let Some(forward) = &self.forward {
            // A closed channel means nobody listens any more; still answer.
            let _ = forward.send(message).await;
        }
        Some(reply)
    }
}

impl<H: Handler> Handler for Arc<H> {
    fn on_message(
        &self,
        peer: &Peer,
        message: Message,
    ) -> impl Future<Output = Option<Message>> + Send {
        (**self).on_message(peer, message)
    }

    fn on_frame(&self, peer: &Peer, frame: Frame) -> impl Future<Output = Option<Frame>> + Send {
        (**self).on_frame(peer, frame)
    }

    fn on_connect(&self, peer: &Peer) {
        (**self).on_connect(peer)
    }

    fn on_disconnect(&self, peer: &Peer, how_it_ended: &Result<Ended, Error>) {
        (**self).on_disconnect(peer, how_it_ended)
    }
}
