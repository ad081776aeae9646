//! The HTTP front every port shares: accept, TLS, edge limits and the conformance checks that
//! come before any port's own handling (`listener`), and the problem+json every refusal is
//! answered with, the proxy's and the admin API's alike (`problem`), with its `X-Request-Id`
//! (`request_id`).

pub mod body;
pub(crate) mod h1;
pub mod listener;
pub mod problem;
pub mod request_id;
