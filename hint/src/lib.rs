//! Nothing to see: this crate exists for its build script (see build.rs).
