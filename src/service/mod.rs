//! Redswitch itself: the Redis-driven agent.
//!
//! - [`validate`]: the allow-list grammars every value from Redis must match
//!   before it may reach FreeSWITCH or a Redis key name (SPEC §3, §10).
//! - [`job`]: the `asp-call` job, parsed and validated.
//! - [`queue`]: reliable, at-least-once taking of jobs from the job list,
//!   with per-instance processing lists, liveness keys, a reaper and dead
//!   letters.
//! - [`events`]: the messages Redswitch publishes on a call's channel and
//!   the history and active-call keys kept with them.
//! - [`control`]: control messages from controllers, and the router that
//!   delivers them from one pub/sub connection to each call's mailbox.
//! - [`store`]: connections to Redis, standalone or cluster.
//!
//! This is the only part of Redswitch that talks to Redis.

pub mod control;
pub mod events;
pub mod job;
pub mod queue;
pub mod store;
pub mod validate;
