//! The command line: clap definitions for every flag and environment variable.
