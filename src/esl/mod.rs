//! The Event Socket Layer protocol, pure and I/O-free.
//!
//! - [`frame`]: one frame (header block + optional body).
//! - [`codec`]: the tokio-util codec with size limits.
//! - [`event`]: typed events from plain and JSON encodings, and back.
//! - [`command`]: the commands a client sends, and their encoding.
//!
//! Nothing here touches a socket: connections live in [`crate::switch`] and
//! the simulator in [`crate::sim`].

pub mod codec;
pub mod command;
pub mod event;
pub mod frame;

pub use codec::{CodecError, EslCodec, Role};
pub use command::{CallCommand, Command, CommandError, EventFormat, Execute, SendMsg};
pub use event::{Event, EventError};
pub use frame::{ContentType, Frame};
