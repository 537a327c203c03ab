//! renalscan-edge (work in progress).

fn main() {}
