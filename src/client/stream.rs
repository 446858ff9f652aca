//! The stream under a client connection: TCP, or (feature `tls`) TLS over
//! TCP for `wss://`; either may run through a proxy's tunnel.

use crate::tcp::Tcp;
#[cfg(feature = "tls")]
pub use with_tls::ClientStream;

/// The stream under a client connection: without the `tls` feature, TCP
/// itself, so that the server and the client share one copy of the
/// connection loop (a second stream type would add a second, ~14 KB).
#[cfg(not(feature = "tls"))]
pub type ClientStream = Tcp;

#[cfg(feature = "tls")]
mod with_tls {
    use std::io;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use futures_lite::{AsyncRead, AsyncWrite};

    use super::Tcp;
    use crate::tls::client::ClientTls;

    /// The stream under a client connection: TCP, or TLS over TCP for `wss://`
    /// (either may run through a proxy's tunnel).
    #[derive(Debug)]
    pub enum ClientStream {
        /// `ws://`.
        Plain(Tcp),
        /// `wss://` (boxed: rustls' state is a few KiB).
        Tls(Box<ClientTls>),
    }

    impl AsyncRead for ClientStream {
        fn poll_read(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut [u8],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut() {
                ClientStream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
                ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
            }
        }
    }

    impl AsyncWrite for ClientStream {
        fn poll_write(
            self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            match self.get_mut() {
                ClientStream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
                ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
            }
        }

        fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut() {
                ClientStream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
                ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
            }
        }

        /// TCP: FIN. TLS: close_notify, then FIN.
        fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
            match self.get_mut() {
                ClientStream::Plain(tcp) => Pin::new(tcp).poll_close(cx),
                ClientStream::Tls(tls) => Pin::new(tls.as_mut()).poll_close(cx),
            }
        }
    }
}
