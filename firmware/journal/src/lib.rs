//! Crash-safe append-only journal (work in progress).
