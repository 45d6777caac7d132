//! Test support for shopstream's integration tests.
//!
//! Every integration test of the workspace runs against real components: the Apache Kafka
//! broker and the Kubernetes control plane of the project's test bed (`testbed/`). This
//! crate is the one place that knows how to reach them.
//!
//! # Layout
//!
//! - [`bed`]: finds the running test bed (from the environment, or from the env file that
//!   `make testbed-up` writes) or starts it, once per test binary.
//! - [`names`]: unique, DNS-safe names for topics, consumer groups and namespaces, so
//!   tests run in parallel and against a shared broker without seeing each other.
//! - [`kafka`]: client configuration for the bed's broker and topics that delete
//!   themselves when the test ends.
//! - [`broker`]: a broker of a test's own, for tests that stop, restart or reconfigure it.
//! - [`process`]: the workspace's binaries as processes: where they are, a free port, a
//!   log file.
//! - [`browser`]: headless Chromium over WebDriver, for the controller's live view.
//! - [`kube`]: clients for the bed's API server, namespaces that delete themselves, and
//!   `kubectl`/`helm` commands wired to the bed.
//!
//! Cleanup runs in `Drop` on a thread of its own, so it works at the end of a
//! `#[tokio::test]` as well as during a panic, without blocking the test's runtime.

pub mod bed;
pub mod broker;
pub mod browser;
pub mod kafka;
pub mod kube;
pub mod names;
pub mod process;

pub use bed::{TestBed, testbed};
pub use broker::OwnBroker;
pub use kafka::TestTopic;
pub use kube::TestNamespace;
pub use names::unique_name;
pub use process::{free_port, test_log, workspace_binary};

/// Runs `cleanup` to completion on a fresh thread with its own runtime. Used from `Drop`,
/// where the test's runtime may be single-threaded (and busy dropping us) or gone.
pub(crate) fn cleanup_on_own_thread<F, Fut>(what: String, cleanup: F)
where
    F: FnOnce() -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let joined = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(cleanup())
    })
    .join();
    match joined {
        Ok(Ok(())) => {}
        Ok(Err(e)) => eprintln!("shop-testkit: cleanup of {what} failed: {e:#}"),
        Err(_) => eprintln!("shop-testkit: cleanup of {what} panicked"),
    }
}
