//! Placeholder: the load harness's own client (constant rate, h2c) is being written.
fn main() {}
