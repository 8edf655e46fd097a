//! Placeholder load bench (filled in later).
fn main() {}
