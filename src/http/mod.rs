//! The HTTP front every port shares: accept, TLS, edge limits, and the conformance checks that
//! come before any port's own handling.

pub mod listener;
