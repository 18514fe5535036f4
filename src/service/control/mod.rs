//! Call control: the messages controllers publish on a call's channel, and
//! the router that delivers them to the call that owns it.
//!
//! - [`message`]: parsing, pure: a raw message becomes a validated
//!   [`ControlMessage`], one of Redswitch's own events to ignore, or a
//!   [`BadControl`] to answer with an `error`.
//! - [`router`]: one pub/sub connection per instance, a [`Subscription`]
//!   per call, reconnects with the shared backoff.
//! - `inbox`: each call's queues and `error` budget, so `hangup` jumps the
//!   queue and garbage never takes a real command's place.
//!
//! # The contract
//!
//! Every control message on a live call's channel gets exactly one answer
//! (`ack` or `error`), with one exception: a flood. A call answers bad
//! messages (unparseable, unknown `type`, invalid fields) from a budget of
//! [`RouterConfig::error_burst`] refilled at
//! [`RouterConfig::errors_per_sec`], and queues at most
//! [`RouterConfig::mailbox`] valid commands plus
//! [`RouterConfig::overflow`] "too many control messages queued" answers.
//! A message past those limits gets no answer; it is counted
//! ([`ControlRouter::unanswered`]) and logged, at most one line a second
//! for the whole instance. A `hangup` always goes through: it has its own
//! queue and is carried out before anything else waiting.

mod inbox;
pub mod message;
pub mod router;

pub use message::{
    BadControl, ControlError, ControlMessage, Delivery, MAX_CONTROL_BYTES, MAX_PLAY_ITEMS, Parsed,
    PlaySide, parse,
};
pub use router::{ControlRouter, RouterConfig, RouterError, Subscription};
