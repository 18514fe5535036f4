//! Live FreeSWITCH connections: all of Redswitch's ESL I/O lives here.
//!
//! - [`inbound`]: the client actor for FreeSWITCH's event socket (port
//!   8021): `api`, `bgapi` resolved by Job-UUID, subscriptions and filters,
//!   an event stream that never drops, reconnect with backoff.
//! - [`outbound`]: the listener the dialplan `socket` application connects
//!   to, one task per call leg, an allow-list and a cap on legs.
//! - [`call`]: the handle of one leg (answer, play, execute, hang up, its
//!   events).
//! - [`app`]: placing calls ([`app::Dialer`]): originate through the inbound
//!   connection, and the new leg's socket handed to whoever placed it.
//! - [`voice`]: the voice-application API (Doug parity): typed events,
//!   media, recording, DTMF, timers, bridging, conferences, app routing.
//! - [`error`]: the error type with its classifiers.
//! - [`LinkStats`]: counters of a connection's event backlog (fill, stalls,
//!   time stalled, drops, reconnects) for metrics.
//!
//! Both kinds of connection follow one pattern (redis-rs's multiplexed
//! connection): a cloneable handle sends `(command, oneshot)` requests over a
//! bounded channel to one task that owns the socket. That task encodes each
//! command straight into its write buffer, remembers the reply slots in FIFO
//! order (FreeSWITCH answers `command/reply` and `api/response` in the order
//! of the commands), and never stops reading the socket while it waits for
//! anything but room for events: events go to a backlog bounded in bytes,
//! and when a consumer falls that far behind, the task stops reading until
//! it catches up, so FreeSWITCH's own queue holds the excess. No event is
//! ever dropped for a slow consumer, and memory stays bounded.

pub mod app;
mod backlog;
pub mod call;
pub mod error;
pub mod inbound;
mod link;
pub mod outbound;
pub mod voice;

pub use backlog::LinkStats;
pub use call::{Call, CallEvents, ChannelData, Control, Direction, ExecuteComplete, SocketMode};
pub use error::{Error, Result};
pub use inbound::{BgJobResult, EventStream, InboundClient, InboundConfig, ReconnectPolicy};
pub use outbound::{AppResult, BoxError, CallHandler, OutboundConfig, OutboundListener};
