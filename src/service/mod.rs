//! Redswitch itself: the Redis-driven agent.
//!
//! - [`validate`]: the allow-list grammars every value from Redis must match
//!   before it may reach FreeSWITCH or a Redis key name (docs/PROTOCOL.md).
//! - [`job`]: the `asp-call` job, parsed and validated.
//! - [`queue`]: reliable, at-least-once taking of jobs from the job list,
//!   with per-instance processing lists, liveness keys, a reaper and dead
//!   letters.
//! - [`events`]: the messages Redswitch publishes on a call's channel and
//!   the history and active-call keys kept with them.
//! - [`outbox`]: the one ordered path of every write to Redis, which
//!   holds what it cannot send while Redis is away.
//! - [`claims`]: dial-once claims, and the close-out of a dead instance's
//!   calls.
//! - [`control`]: control messages from controllers, and the router that
//!   delivers them from one pub/sub connection to each call's mailbox.
//! - [`store`]: connections to Redis, standalone or cluster.
//! - [`retry`]: re-running a Redis command whose connection broke, where
//!   that is safe.
//! - [`asp_call`]: the asp-call flow, written with the call API of
//!   [`crate::switch`].
//! - [`pacing`]: originates paced under FreeSWITCH's sessions-per-second
//!   limit.
//! - [`agent`]: `redswitch serve`: takes jobs, runs calls, routes control.
//! - [`stats`]: what the agent counts (jobs, calls, hangups, timings).
//! - [`monitor`]: a running agent's liveness, readiness and readings.
//!
//! This is the only part of the agent that talks to Redis (the tester
//! tools `push`, `control` and `demo` talk to it as any producer or
//! controller would).
//!
//! # Redis keys
//!
//! `J` is the job list (`--jobs-key`, default `talkiq-asp.calls`) and `T`
//! its hash tag `{J}`; details in [`queue`] and [`events`].
//!
//! | key | type | expiry |
//! |---|---|---|
//! | `J` | list of jobs, oldest first | none |
//! | `T.processing.<instance>` | list: jobs taken, not yet ended | none (emptied as calls end, or by a reaper) |
//! | `T.alive.<instance>` | string: liveness | 15 s, re-set every 5 s |
//! | `T.instances` | set of instance ids | none (pruned by the reaper) |
//! | `J.dead` | list of dead letters | none; capped at 10,000 |
//! | `T.claim.<dial_id>` | hash: the claim of a live call (instance, token, switch, legs) | max call duration + 15 min; deleted when the call ends |
//! | `{redswitch_history.<org_id>.<user_id>}.call.<token>` | hash: a call's sequence number and which sides ended | as the claim while live; 10 min after the end |
//! | `redswitch_history.<org_id>.<user_id>` | list of published JSON | 4 h, re-set on each write |
//! | `redswitch.<dial_id>.<org_id>.<user_id>` | list of `ACTIVE.<side>` | 24 h, re-set on each write |
//! | channel `<dial_id>` | pub/sub: events out, control in | — |

pub mod agent;
pub mod asp_call;
pub mod claims;
pub mod control;
pub mod events;
pub mod job;
pub mod monitor;
pub mod outbox;
pub mod pacing;
pub mod queue;
pub mod retry;
pub mod stats;
pub mod store;
pub mod validate;
