//! Builder setters for the option structs ([`Config`], [`AccessPolicy`],
//! [`ClientOptions`], [`Reconnect`]).
//!
//! The structs are `#[non_exhaustive]`, so that a new option is not a
//! breaking change; that also rules out struct literals and struct-update
//! syntax outside this crate. Start from `Default::default()` (or
//! [`ClientOptions::new`]) and chain setters instead; the fields stay
//! public for reading and for `options.field = value`:
//!
//! ```
//! use std::time::Duration;
//! use wsloop::{AccessPolicy, Config};
//!
//! let config = Config::default().with_heartbeat(Duration::from_secs(5));
//! assert_eq!(config.idle_timeout(), Duration::from_secs(10));
//! let access = AccessPolicy::default().with_token("s3cret").with_max_connections(100);
//! assert_eq!(access.max_connections, 100);
//! ```
//!
//! Each setter is named `with_` and its field; one for every field.

use std::time::Duration;

use crate::client::{ClientOptions, Reconnect};
use crate::{AccessPolicy, Config};

/// `with_FIELD(value)` for fields set as they are.
macro_rules! setters {
    ($ty:ty { $($(#[$doc:meta])* $name:ident => $field:ident: $t:ty,)* }) => {
        impl $ty {
            $(
                $(#[$doc])*
                #[must_use]
                pub fn $name(mut self, value: $t) -> Self {
                    self.$field = value;
                    self
                }
            )*
        }
    };
}

setters!(Config {
    /// Sets [`heartbeat`](crate::Config::heartbeat).
    with_heartbeat => heartbeat: Duration,
    /// Sets [`max_message_size`](crate::Config::max_message_size).
    with_max_message_size => max_message_size: usize,
    /// Sets [`outbound_capacity`](crate::Config::outbound_capacity).
    with_outbound_capacity => outbound_capacity: usize,
    /// Sets [`handshake_timeout`](crate::Config::handshake_timeout).
    with_handshake_timeout => handshake_timeout: Duration,
    /// Sets [`read_buffer_size`](crate::Config::read_buffer_size).
    with_read_buffer_size => read_buffer_size: usize,
    /// Sets [`request_timeout`](crate::Config::request_timeout).
    with_request_timeout => request_timeout: Duration,
    /// Sets [`write_timeout`](crate::Config::write_timeout).
    with_write_timeout => write_timeout: Duration,
    /// Sets [`max_messages_per_second`](crate::Config::max_messages_per_second).
    with_max_messages_per_second => max_messages_per_second: u32,
    /// Sets [`max_frames_per_second`](crate::Config::max_frames_per_second).
    with_max_frames_per_second => max_frames_per_second: u32,
    /// Sets [`max_bytes_per_second`](crate::Config::max_bytes_per_second).
    with_max_bytes_per_second => max_bytes_per_second: u64,
    /// Sets [`max_fragments`](crate::Config::max_fragments).
    with_max_fragments => max_fragments: u32,
    /// Sets [`message_timeout`](crate::Config::message_timeout).
    with_message_timeout => message_timeout: Duration,
    /// Sets [`max_request_head_size`](crate::Config::max_request_head_size).
    with_max_request_head_size => max_request_head_size: usize,
});

impl Config {
    /// Sets an explicit [`idle_timeout`](crate::Config::idle_timeout) (instead of
    /// the one derived from the heartbeat).
    #[must_use]
    pub fn with_idle_timeout(mut self, value: Duration) -> Self {
        self.idle_timeout = Some(value);
        self
    }
}

setters!(AccessPolicy {
    /// Sets [`allowed_origins`](crate::AccessPolicy::allowed_origins).
    with_allowed_origins => allowed_origins: Vec<String>,
    /// Sets [`allowed_hosts`](crate::AccessPolicy::allowed_hosts).
    with_allowed_hosts => allowed_hosts: Vec<String>,
    /// Sets [`allow_any_origin`](crate::AccessPolicy::allow_any_origin).
    with_allow_any_origin => allow_any_origin: bool,
    /// Sets [`AccessPolicy`](crate::AccessPolicy)'s `max_connections` field.
    with_max_connections => max_connections: usize,
    /// Sets [`AccessPolicy`](crate::AccessPolicy)'s `max_connections_per_ip` field.
    with_max_connections_per_ip => max_connections_per_ip: usize,
});

impl AccessPolicy {
    /// Sets the [`token`](crate::AccessPolicy::token) required at `/server`.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }
}

setters!(Reconnect {
    /// Sets [`enabled`](crate::client::Reconnect::enabled).
    with_enabled => enabled: bool,
    /// Sets [`initial_delay`](crate::client::Reconnect::initial_delay).
    with_initial_delay => initial_delay: Duration,
    /// Sets [`max_delay`](crate::client::Reconnect::max_delay).
    with_max_delay => max_delay: Duration,
    /// Sets [`max_attempts`](crate::client::Reconnect::max_attempts).
    with_max_attempts => max_attempts: Option<u32>,
});

setters!(ClientOptions {
    /// Sets [`config`](crate::client::ClientOptions::config).
    with_config => config: Config,
    /// Sets [`reconnect`](crate::client::ClientOptions::reconnect).
    with_reconnect => reconnect: Reconnect,
    /// Sets [`interval`](crate::client::ClientOptions::interval).
    with_interval => interval: Duration,
    /// Sets [`count`](crate::client::ClientOptions::count).
    with_count => count: Option<u64>,
    /// Sets [`stdin`](crate::client::ClientOptions::stdin).
    with_stdin => stdin: bool,
});

impl ClientOptions {
    /// Sets the [`token`](crate::client::ClientOptions::token) sent as
    /// `Authorization: Bearer`.
    #[must_use]
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Sets [`proxy`](crate::client::ClientOptions::proxy).
    #[cfg(feature = "proxy")]
    #[must_use]
    pub fn with_proxy(mut self, proxy: crate::client::Proxy) -> Self {
        self.proxy = proxy;
        self
    }
}
