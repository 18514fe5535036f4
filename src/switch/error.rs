//! The one error type of [`crate::switch`], with classifiers so callers
//! (reconnect logic, the asp-call flow, the command line) can decide what to
//! do without matching every variant.

use crate::esl::{CodecError, CommandError};
use std::time::Duration;

/// What can go wrong on a live FreeSWITCH connection.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing accepted the TCP connection (refused, unreachable host, DNS).
    #[error("cannot reach FreeSWITCH at {addr}: {source} (is its event socket listening there?)")]
    Unreachable {
        /// The address we tried.
        addr: String,
        /// Why the connection failed.
        #[source]
        source: std::io::Error,
    },
    /// The TCP connection or the greeting did not come within the timeout.
    #[error("timed out connecting to FreeSWITCH at {addr} after {after:?}")]
    ConnectTimeout {
        /// The address we tried.
        addr: String,
        /// The connect timeout.
        after: Duration,
    },
    /// FreeSWITCH answered `auth` with `-ERR invalid`.
    #[error("FreeSWITCH at {addr} rejected the event-socket password")]
    AuthFailed {
        /// The address we authenticated to.
        addr: String,
    },
    /// The peer did not greet us as FreeSWITCH does (an ACL `rude-rejection`,
    /// another protocol on the port, or a close before the greeting).
    #[error("FreeSWITCH at {addr} refused the session: {reason}")]
    Refused {
        /// The address we tried.
        addr: String,
        /// What the peer sent or did.
        reason: String,
    },
    /// An outbound (`socket` app) connection did not complete its `connect`
    /// handshake.
    #[error("outbound socket handshake failed: {0}")]
    Handshake(String),
    /// FreeSWITCH closed the connection (EOF on the socket).
    #[error("FreeSWITCH at {addr} closed the connection")]
    Disconnected {
        /// The peer that closed.
        addr: String,
    },
    /// FreeSWITCH sent a message larger than the connection's event buffer:
    /// it could never be buffered, so the connection was closed (the inbound
    /// client then reconnects; nothing queued before it is lost).
    #[error(
        "FreeSWITCH sent a message of {len} bytes, more than the {limit}-byte event buffer; closed the connection"
    )]
    TooLarge {
        /// The announced `Content-Length`.
        len: u64,
        /// The event buffer's size in bytes.
        limit: usize,
    },
    /// The connection went away while the request was in flight.
    #[error("the FreeSWITCH connection dropped before the reply came")]
    ConnectionDropped,
    /// The inbound client is reconnecting; the request was not sent.
    #[error("not connected to FreeSWITCH (reconnecting)")]
    NotConnected,
    /// The connection task has ended (the client or the leg is closed).
    #[error("the FreeSWITCH connection is closed")]
    Closed,
    /// No reply within the request timeout.
    #[error("no reply from FreeSWITCH within {after:?}")]
    Timeout {
        /// The timeout that elapsed.
        after: Duration,
    },
    /// FreeSWITCH answered the command with `-ERR …`.
    #[error("FreeSWITCH answered {reply:?}")]
    CommandFailed {
        /// The reply text or API output, e.g. `-ERR no_such_command Command not found!`.
        reply: String,
    },
    /// The channel hung up before the operation completed (an unknown
    /// application makes FreeSWITCH hang up with `DESTINATION_OUT_OF_ORDER`).
    #[error("the channel hung up ({cause}) before the operation completed")]
    Hangup {
        /// The Hangup-Cause, e.g. `NORMAL_CLEARING`.
        cause: String,
    },
    /// The peer sent bytes that are not ESL; the connection was closed.
    #[error("protocol error: {0}")]
    Protocol(#[source] CodecError),
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
    /// The command could not be encoded safely (a line break in a value).
    #[error(transparent)]
    InvalidCommand(#[from] CommandError),
}

impl From<CodecError> for Error {
    fn from(e: CodecError) -> Self {
        match e {
            CodecError::Io(io) => Self::Io(io),
            CodecError::Command(c) => Self::InvalidCommand(c),
            CodecError::BodyTooLarge { len, max } => Self::TooLarge { len, limit: max },
            other => Self::Protocol(other),
        }
    }
}

impl Error {
    /// True when the request failed because the link is (or went) down: the
    /// same request may succeed after a reconnect.
    pub fn is_connection_dropped(&self) -> bool {
        matches!(
            self,
            Self::ConnectionDropped
                | Self::Disconnected { .. }
                | Self::TooLarge { .. }
                | Self::NotConnected
                | Self::Closed
                | Self::Io(_)
                | Self::Protocol(_)
        )
    }

    /// True for request and connect timeouts.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Self::Timeout { .. } | Self::ConnectTimeout { .. })
    }

    /// True when FreeSWITCH refused the password.
    pub fn is_auth_failed(&self) -> bool {
        matches!(self, Self::AuthFailed { .. })
    }

    /// True when the channel hung up under the operation.
    pub fn is_hangup(&self) -> bool {
        matches!(self, Self::Hangup { .. })
    }

    /// True when FreeSWITCH itself answered `-ERR`.
    pub fn is_command_failed(&self) -> bool {
        matches!(self, Self::CommandFailed { .. })
    }
}

/// Results of [`crate::switch`] operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;
