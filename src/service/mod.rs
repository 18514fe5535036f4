//! Redswitch itself: the Redis-driven agent.
