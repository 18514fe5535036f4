//! The subcommands of the `redswitch` binary, one module each. `main.rs`
//! parses the command line ([`crate::cli`]) and calls into these.

pub mod calls;
pub mod demo;
pub mod events;
pub mod redis_tools;
pub mod schema;
pub mod serve;
pub mod sim;
