//! Redswitch: a call-control agent for FreeSWITCH.
//!
//! # Layout
//!
//! Data flows one way: bytes → [`esl`] frames → [`switch`] connections and
//! calls → [`service`] logic → Redis, and back the same way.
//!
//! - [`esl`]: the Event Socket Layer protocol, pure and I/O-free (frames,
//!   codec, events, commands).
//! - [`switch`]: live FreeSWITCH connections: the inbound client, the outbound
//!   listener and the call/leg handle of the voice-application API.
//! - [`service`]: Redswitch itself, the Redis-driven agent (jobs, the asp-call
//!   flow, control routing, published events and Redis state).
//! - [`sim`]: a protocol-faithful FreeSWITCH simulator for tests, demos and
//!   load tests. It depends only on [`esl`] (and [`backoff`]'s timer helper).
//! - [`backoff`]: the one backoff policy every reconnect and retry uses,
//!   and sleeping until an optional deadline.
//! - [`ops`]: metrics, health and readiness over HTTP, read from what
//!   [`service`] and [`switch`] expose.
//! - [`cli`]: the command line (flags and environment variables), and
//!   [`commands`]: what each subcommand does.

pub mod backoff;
pub mod cli;
pub mod commands;
pub mod esl;
pub mod ops;
pub mod service;
pub mod sim;
pub mod switch;
