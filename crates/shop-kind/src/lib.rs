//! The end-to-end test of the user's flow on kind lives in `tests/`; this crate has no code
//! of its own. It needs the test bed's `kind` component (`KIND_NODE_IMAGE`), which `make
//! test` includes.
