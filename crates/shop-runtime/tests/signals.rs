//! SIGTERM handling, in a test binary of its own: the signal goes to the whole process.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

#[tokio::test]
async fn sigterm_cancels_the_signal_token() {
    shop_runtime::telemetry::init_for_tests();
    let token = shop_runtime::signal_token();
    assert!(!token.is_cancelled());

    let status = tokio::process::Command::new("kill")
        .args(["-TERM", &std::process::id().to_string()])
        .status()
        .await
        .unwrap();
    assert!(status.success());

    tokio::time::timeout(Duration::from_secs(5), token.cancelled())
        .await
        .expect("the token is cancelled by SIGTERM, and the process is still alive");
}
