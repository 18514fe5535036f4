//! Live FreeSWITCH connections (all I/O lives here).
