//! The Event Socket Layer protocol, pure and I/O-free.
