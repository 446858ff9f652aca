//! What the application plugs into the loop: the [`Handler`] trait, its
//! impls for closures, channels and `Arc`, and the seed's [`SeedHandler`].
//! The default [`Handler::on_frame`] is where inbound frames are decoded
//! in the connection's [`Protocol`] and replies to our own requests are
//! routed off to the session ([`Peer::route_reply`] for an override).

use std::future::Future;
use std::sync::Arc;

use async_channel::Sender;
use async_tungstenite::tungstenite::Message as Frame;
use futures_lite::future;

use super::Peer;
use crate::{Ended, Error, Message, Protocol, Seed};

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
///
/// `P` is the [`Protocol`] the connection speaks, [`Seed`] by default; a
/// handler of the application's own types implements `Handler<Json<T>>`
/// (see [`Json`](crate::Json) and `examples/typed_chat.rs`).
pub trait Handler<P: Protocol = Seed>: Send + Sync + 'static {
    /// Handles one decoded message; `Some(reply)` is sent back to the peer.
    fn on_message(
        &self,
        peer: &Peer<P>,
        message: P::Message,
    ) -> impl Future<Output = Option<P::Message>> + Send;

    /// Called once when a connection is established, before its loop
    /// starts; keep the [`Peer`] to push to it later. Does nothing by default.
    ///
    /// Called on both sides: by the server for each accepted connection,
    /// by the client for each connection it (re)establishes.
    fn on_connect(&self, peer: &Peer<P>) {
        let _ = peer;
    }

    /// Called exactly once when a connection's loop has ended, on both
    /// sides, with how it ended (`Ok` a normal end, `Err` a failure); for
    /// every [`on_connect`](Handler::on_connect) there is one call. The
    /// [`Peer`] is already closed. Does nothing by default.
    fn on_disconnect(&self, peer: &Peer<P>, how_it_ended: &Result<Ended, Error>) {
        let _ = (peer, how_it_ended);
    }

    /// Handles one raw data frame (text or binary); `Some(frame)` is sent
    /// back. The default decodes the message in `P`, calls
    /// [`on_message`](Handler::on_message) and encodes its reply; a
    /// malformed message gets [`Protocol::error_reply`] (the seed's says
    /// where the fault is) and the connection lives on.
    ///
    /// Override it to speak something else as well (raw text, say; the
    /// echo example does). The default also routes the replies to this
    /// side's own requests ([`Peer::request`]); an override that sends
    /// requests starts with [`Peer::route_reply`], which does just that:
    ///
    /// ```
    /// use wsloop::{Frame, Message, Peer};
    ///
    /// struct Shout;
    ///
    /// impl wsloop::Handler for Shout {
    ///     async fn on_message(&self, _: &Peer, m: Message) -> Option<Message> {
    ///         Some(m.seed_reply())
    ///     }
    ///
    ///     // Raw text in, upper-cased text out; replies to
    ///     // `peer.request(..)` still reach their requests.
    ///     async fn on_frame(&self, peer: &Peer, frame: Frame) -> Option<Frame> {
    ///         let frame = peer.route_reply(frame)?;
    ///         let text = frame.into_text().ok()?;
    ///         Some(Frame::text(text.to_uppercase()))
    ///     }
    /// }
    /// ```
    fn on_frame(&self, peer: &Peer<P>, frame: Frame) -> impl Future<Output = Option<Frame>> + Send {
        async move {
            // Text and binary frames are read alike.
            let bytes: &[u8] = match &frame {
                Frame::Text(text) => text.as_bytes(),
                Frame::Binary(bytes) => bytes,
                _ => return None,
            };
            debug!("{peer} -> {}", crate::log_safe::body(bytes));
            let reply = match P::decode(bytes) {
                Ok(message) => {
                    // Replies complete our own outstanding requests; only
                    // requests reach the handler.
                    let request = peer.session().route(message, peer)?;
                    self.on_message(peer, request).await
                }
                Err(err) => {
                    crate::log_safe::malformed(peer, &err);
                    P::error_reply(&err)
                }
            };
            reply.map(|reply| P::encode(&reply))
        }
    }
}

impl<P, F> Handler<P> for F
where
    P: Protocol,
    F: Fn(&Peer<P>, P::Message) -> Option<P::Message> + Send + Sync + 'static,
{
    fn on_message(
        &self,
        peer: &Peer<P>,
        message: P::Message,
    ) -> impl Future<Output = Option<P::Message>> + Send {
        future::ready(self(peer, message))
    }
}

/// Forwards into the channel; see [`Handler`]. One impl per ready-made
/// protocol rather than one for every `Sender<P::Message>`: from the latter
/// `Client::connect(&ex, options, sender)` could not tell `P`.
impl Handler for Sender<Message> {
    async fn on_message(&self, _peer: &Peer, message: Message) -> Option<Message> {
        forward(self, message).await
    }
}

#[cfg(feature = "serde")]
impl<T: Send + 'static> Handler<crate::Json<T>> for Sender<T>
where
    crate::Json<T>: Protocol<Message = T>,
{
    async fn on_message(&self, _peer: &Peer<crate::Json<T>>, message: T) -> Option<T> {
        forward(self, message).await
    }
}

#[cfg(feature = "nanoserde")]
impl<T: Send + 'static> Handler<crate::NanoJson<T>> for Sender<T>
where
    crate::NanoJson<T>: Protocol<Message = T>,
{
    async fn on_message(&self, _peer: &Peer<crate::NanoJson<T>>, message: T) -> Option<T> {
        forward(self, message).await
    }
}

/// Sends `message` into `channel`, waiting while it is full; answers nothing.
async fn forward<M>(channel: &Sender<M>, message: M) -> Option<M> {
    // A closed channel means nobody listens any more; drop the message.
    let _ = channel.send(message).await;
    None
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

impl<P: Protocol, H: Handler<P>> Handler<P> for Arc<H> {
    fn on_message(
        &self,
        peer: &Peer<P>,
        message: P::Message,
    ) -> impl Future<Output = Option<P::Message>> + Send {
        (**self).on_message(peer, message)
    }

    fn on_frame(&self, peer: &Peer<P>, frame: Frame) -> impl Future<Output = Option<Frame>> + Send {
        (**self).on_frame(peer, frame)
    }

    fn on_connect(&self, peer: &Peer<P>) {
        (**self).on_connect(peer)
    }

    fn on_disconnect(&self, peer: &Peer<P>, how_it_ended: &Result<Ended, Error>) {
        (**self).on_disconnect(peer, how_it_ended)
    }
}
