//! Operating the agent: Prometheus metrics at `/metrics`, liveness at
//! `/health` and readiness at `/ready`, served over HTTP when
//! `--metrics-listen` is set, and `redswitch probe` to ask them.
//!
//! - [`metrics`]: the registry, built from what the agent exposes.
//! - [`server`]: the HTTP server (hyper), safe against slow clients.
//! - [`probe`]: the client side of container health checks.
//!
//! This module reads what [`crate::service`] and [`crate::switch`] expose
//! (through [`crate::service::monitor::Monitor`]); neither of them knows
//! it exists.

pub mod metrics;
pub mod probe;
pub mod server;

pub use server::{OpsError, OpsServer};
