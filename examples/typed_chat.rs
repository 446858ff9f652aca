//! A chat server and its clients speaking the application's own message
//! types instead of the seed's `Message`: requests (`join`, `say`), their
//! replies (`joined`, `sent`, `error`) and a server push (`said`), as serde
//! types through [`wsloop::Json`], with rooms as the hub's topics.
//!
//! Run the self-contained demo (a server, and two clients talking through
//! it), or the server alone and talk to it with any WebSocket client:
//!
//! ```text
//! cargo run --example typed_chat
//! cargo run --example typed_chat -- --address 127.0.0.1:8080
//! ```
//!
//! On the wire, one JSON object per text frame, tagged by `type`; `id`
//! correlates a reply with its request (the library stamps a fresh one on
//! every `request_message`):
//!
//! ```text
//! -> {"type":"join","id":1,"room":"lobby","name":"alice"}
//! <- {"type":"joined","id":1,"members":1}
//! -> {"type":"say","id":2,"room":"lobby","text":"hi"}
//! <- {"type":"sent","id":2,"delivered":1}
//! <- {"type":"said","room":"lobby","from":"alice","text":"hi"}   (to every member)
//! ```
//!
//! (The reply comes first: the handler's answer is written at once, the
//! push goes through each member's outbound queue.)
//!
//! What to watch for: each reply carries its request's `id`, a message
//! published to a room reaches its members only, a member that leaves is
//! forgotten (`on_disconnect`), and a malformed message is answered with an
//! `error` under the `id` that could still be read.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use smol::Executor;
use wsloop::client::{Client, ClientOptions};
use wsloop::{Config, Correlated, DecodeError, Ended, Error, Handler, Hub, Json, Peer, Server};

/// Every message of the chat protocol, both directions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum Chat {
    /// Request: enter `room` as `name`.
    Join { id: i64, room: String, name: String },
    /// Request: send `text` to everyone in `room`.
    Say { id: i64, room: String, text: String },
    /// Reply to `join`: how many are in the room now.
    Joined { id: i64, members: usize },
    /// Reply to `say`: how many members it was delivered to.
    Sent { id: i64, delivered: usize },
    /// Reply to a request that failed (or could not be read).
    Error { id: i64, error: String },
    /// Push: someone said something in a room you are in.
    Said {
        room: String,
        from: String,
        text: String,
    },
}

/// The protocol: our own type, as JSON through serde.
type ChatJson = Json<Chat>;

/// What wsloop needs to correlate replies with requests: the field that
/// holds the id, and which messages are replies.
impl Correlated for Chat {
    const ID_FIELD: &'static str = "id";

    fn correlation_id(&self) -> Option<i64> {
        match self {
            Chat::Join { id, .. }
            | Chat::Say { id, .. }
            | Chat::Joined { id, .. }
            | Chat::Sent { id, .. }
            | Chat::Error { id, .. } => Some(*id),
            Chat::Said { .. } => None,
        }
    }

    fn set_correlation_id(&mut self, new: i64) {
        if let Chat::Join { id, .. } | Chat::Say { id, .. } = self {
            *id = new;
        }
    }

    fn is_reply(&self) -> bool {
        matches!(
            self,
            Chat::Joined { .. } | Chat::Sent { .. } | Chat::Error { .. }
        )
    }

    /// A message we could not read still gets an answer, under its `id`
    /// when it had one.
    fn error_reply(error: &DecodeError) -> Option<Self> {
        Some(Chat::Error {
            id: error.request_id.unwrap_or(0),
            error: error.to_string(),
        })
    }
}

/// The server's handler: rooms are the hub's topics, names a map of its own.
struct Rooms {
    hub: Arc<Hub<ChatJson>>,
    /// Each connection's name, from its first `join`.
    names: Mutex<HashMap<u64, String>>,
}

impl Rooms {
    fn name_of(&self, id: u64) -> String {
        let names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        names.get(&id).cloned().unwrap_or_default()
    }
}

impl Handler<ChatJson> for Rooms {
    async fn on_message(&self, peer: &Peer<ChatJson>, message: Chat) -> Option<Chat> {
        match message {
            Chat::Join { id, room, name } => {
                // Step 1: the room is a topic; joining subscribes to it.
                self.hub.subscribe(peer.id(), &room);
                let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
                names.insert(peer.id(), name);
                let members = self.hub.subscribers(&room).len();
                Some(Chat::Joined { id, members })
            }
            Chat::Say { id, room, text } => {
                // Step 2: only members may speak in a room.
                if !self.hub.subscribers(&room).contains(&peer.id()) {
                    let error = format!("not in room {room:?}: join first");
                    return Some(Chat::Error { id, error });
                }
                // Step 3: publish encodes the push once for every member.
                let from = self.name_of(peer.id());
                let said = Chat::Said {
                    room: room.clone(),
                    from,
                    text,
                };
                let delivered = self.hub.publish(&room, &said);
                Some(Chat::Sent { id, delivered })
            }
            // Replies and pushes are not requests: a client sends none.
            other => {
                let id = other.correlation_id().unwrap_or(0);
                let error = "not a request".to_string();
                Some(Chat::Error { id, error })
            }
        }
    }

    fn on_disconnect(&self, peer: &Peer<ChatJson>, _: &Result<Ended, Error>) {
        // Step 4: the hub already ended its subscriptions; forget its name.
        let mut names = self.names.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(name) = names.remove(&peer.id()) {
            println!("server: {name} left");
        }
    }
}

/// Binds a chat server (not yet running): the seed server, told to speak
/// `Json<Chat>`.
async fn chat_server(address: &str) -> Result<(Server<ChatJson>, Rooms), Error> {
    let server = Server::bind(address, Config::default())
        .await?
        .speaking::<ChatJson>();
    let rooms = Rooms {
        hub: server.hub(),
        names: Mutex::default(),
    };
    Ok((server, rooms))
}

/// Connects one chat client whose pushes go to `pushes` (a channel is a
/// handler: it answers nothing), and joins `room` as `name`.
async fn join(
    ex: &Arc<Executor<'static>>,
    address: &str,
    name: &str,
    room: &str,
    pushes: async_channel::Sender<Chat>,
) -> Result<Client<ChatJson>, Error> {
    let client = Client::connect(ex, ClientOptions::new(address), pushes).await?;
    let join = Chat::Join {
        id: 0, // stamped by request_message
        room: room.into(),
        name: name.into(),
    };
    match client.request_message(join).await {
        Ok(reply) => println!("{name}: {reply:?}"),
        Err(err) => println!("{name}: join failed: {err}"),
    }
    Ok(client)
}

/// The demo: alice and bob join the lobby, carol another room; alice
/// speaks; bob hears it, carol does not.
async fn demo(ex: &Arc<Executor<'static>>, address: &str) -> Result<(), Error> {
    let (bob_tx, bob_hears) = async_channel::unbounded();
    let (carol_tx, carol_hears) = async_channel::unbounded();
    let (alice_tx, _alice_hears) = async_channel::unbounded();
    let bob = join(ex, address, "bob", "lobby", bob_tx).await?;
    let carol = join(ex, address, "carol", "kitchen", carol_tx).await?;
    let alice = join(ex, address, "alice", "lobby", alice_tx).await?;

    // A request of our own type, its reply correlated by `id`.
    let say = Chat::Say {
        id: 0,
        room: "lobby".into(),
        text: "hello, bob".into(),
    };
    match alice.request_message(say).await {
        Ok(reply) => println!("alice: {reply:?}"),
        Err(err) => println!("alice: say failed: {err}"),
    }
    if let Ok(Chat::Said { from, text, .. }) = bob_hears.recv().await {
        println!("bob heard {from}: {text}");
    }
    println!("carol heard {} message(s)", carol_hears.len());

    // Speaking in a room one has not joined is refused, typed.
    let stray = Chat::Say {
        id: 0,
        room: "kitchen".into(),
        text: "anyone?".into(),
    };
    if let Ok(reply) = alice.request_message(stray).await {
        println!("alice: {reply:?}");
    }
    for client in [alice, bob, carol] {
        let _ = client.close().await;
    }
    Ok(())
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let mut address = None;
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--address" => address = args.next(),
            other => eprintln!("ignoring unknown argument {other:?}"),
        }
    }
    let ex = Arc::new(Executor::new());
    smol::block_on(ex.run(async {
        let bind = address.as_deref().unwrap_or("127.0.0.1:0");
        let (server, rooms) = chat_server(bind).await?;
        let addr = server.local_addr()?.to_string();
        println!("listening on {addr}");
        // Server mode runs until killed; the demo until its clients finish.
        let shutdown = async {
            match address {
                Some(_) => std::future::pending::<()>().await,
                None => {
                    if let Err(err) = demo(&ex, &addr).await {
                        println!("demo failed: {err}");
                    }
                }
            }
        };
        server.run(&ex, rooms, shutdown).await
    }))
}
