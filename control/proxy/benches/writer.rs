//! Placeholder; the writer benchmark is being written.
fn main() {}
