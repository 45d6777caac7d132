//! Tests of the images built from the top-level `Dockerfile` live in `tests/`; this crate
//! has no code of its own. `make test` builds the images (`scripts/images.sh build`) before
//! it runs them, when the test bed has a Docker engine.
