//! `redswitch events`: print FreeSWITCH events as JSON lines.
