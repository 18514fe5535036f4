//! The inbound ESL client: Redswitch connects to FreeSWITCH's event socket.
//!
//! [`InboundClient::connect`] authenticates and returns a cloneable handle
//! plus an [`EventStream`]. One driver task owns the socket (the redis-rs
//! multiplexed-connection model):
//!
//! - requests (`api`, `bgapi`, `event`, `filter`, `sendmsg` …) arrive over a
//!   bounded channel with a oneshot reply slot; the driver encodes each into
//!   its write buffer and queues the slot. FreeSWITCH answers `command/reply`
//!   and `api/response` in command order, so replies are matched FIFO (the
//!   reply queue of `switch::link`, shared with the leg driver);
//! - `bgapi` sends a `Job-UUID` chosen here (uuid v4): the job is registered
//!   before the command is written, so its BACKGROUND_JOB event cannot race
//!   the reply. The client always subscribes to BACKGROUND_JOB for this (and
//!   adds `filter Event-Name BACKGROUND_JOB` next to user filters); those
//!   events reach the [`EventStream`] only if the user subscribed to them;
//! - **no event is ever dropped.** Events wait for the consumer in a backlog
//!   bounded in bytes ([`InboundConfig::event_buffer_bytes`], 64 MiB by
//!   default). When it is full the driver stops reading the socket until
//!   the consumer has taken half of it: the excess waits in the kernel and
//!   then in FreeSWITCH's own queue for the listener (100,000 events; it
//!   drops a listener only after 500 events lost on top of that). While
//!   stalled, replies to requests wait behind the unread events too, so a
//!   consumer must not wait on a request of the same client while it stops
//!   reading its stream. The fill level, stalls and time stalled are in
//!   [`InboundClient::stats`]. A message larger than the whole buffer can
//!   never fit: the connection is closed with [`Error::TooLarge`] and
//!   reconnected; everything queued before it is still delivered.
//!   Frames are queued undecoded: decoding happens in the consumer's task
//!   ([`EventStream::recv`]), which spreads the work over two cores;
//! - when the link drops, every request in flight fails at once with
//!   [`Error::ConnectionDropped`], requests made while reconnecting fail
//!   with [`Error::NotConnected`] (both `is_connection_dropped()`), and the
//!   driver reconnects with exponential backoff and jitter, re-authenticates
//!   and replays the subscriptions (format, event names, nixed names,
//!   filters). With [`ReconnectPolicy::never`] it stops instead, and the
//!   stream ends with the reason ([`EventStream::take_error`]). Every
//!   request has a timeout.
//!
//! The parts: [`config`] (addresses and limits), `subscriptions` (what to
//! replay), `handshake` (connect, authenticate, replay), `driver` (the task
//! that owns the socket), `handle` (the [`InboundClient`] API) and `stream`
//! (the consumer's end).

pub mod config;
mod driver;
mod handle;
mod handshake;
mod stream;
mod subscriptions;

pub use config::{DEFAULT_EVENT_BUFFER_BYTES, InboundConfig, ReconnectPolicy};
pub use handle::{BgJobResult, InboundClient};
pub use stream::{EventStream, decode};

use crate::switch::backlog::LinkStats;
use crate::switch::error::Error;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

/// State shared by the handles, the stream and the driver.
#[derive(Debug)]
struct Shared {
    /// False while the driver is reconnecting.
    connected: AtomicBool,
    /// Counters for the operator.
    stats: Arc<LinkStats>,
    /// Why the driver stopped, for the stream's consumer.
    ended: Mutex<Option<Error>>,
}
