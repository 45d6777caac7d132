//! The workspace's binaries as processes in tests: where they are, a free port for them,
//! and a log file to keep what they print.

use std::path::PathBuf;

use crate::bed::repo_dir;

/// A workspace binary (`cargo build --workspace --bins`, which `make test` runs before
/// the tests), found beside the running test binary in the same target directory.
///
/// # Panics
/// When it has not been built, saying what to run.
pub fn workspace_binary(name: &str) -> PathBuf {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.to_owned()))
        .unwrap_or_default();
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} missing: run `cargo build --workspace --bins` first",
        path.display()
    );
    path
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
///
/// # Panics
/// When no port can be bound at all.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|address| address.port())
        .unwrap_or_else(|error| panic!("no free port on 127.0.0.1: {error}"))
}

/// A fresh log file `target/test-logs/<name>.log`, for what a process prints, kept for
/// when the test fails.
///
/// # Panics
/// When the file cannot be created.
pub fn test_log(name: &str) -> std::fs::File {
    let dir = repo_dir().join("target/test-logs");
    let file = std::fs::create_dir_all(&dir)
        .and_then(|()| std::fs::File::create(dir.join(format!("{name}.log"))));
    file.unwrap_or_else(|error| panic!("creating {}/{name}.log: {error}", dir.display()))
}
