//! Crash tests (filled in below).
