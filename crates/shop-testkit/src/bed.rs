//! Finding, or starting, the test bed.
//!
//! A test binary attaches to the bed named in its environment (`SHOPSTREAM_KAFKA`,
//! `SHOPSTREAM_KUBECONFIG`, `SHOPSTREAM_TESTBED_BIN`, as written by `make testbed-up` into
//! the bed's env file, `testbed/bed.sh env` names it). When they are not set it runs `testbed/bed.sh up`, which is
//! idempotent, and reads the env file it writes. The bed it starts keeps running for the
//! next test binary; `make testbed-down` stops it.
//!
//! The API server is taken from `SHOPSTREAM_KUBECONFIG`, never from a plain `KUBECONFIG`,
//! so that a test never touches a cluster of the user's by accident.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use anyhow::{Context, bail};

/// Where the bed's components are reachable.
#[derive(Debug, Clone)]
pub struct TestBed {
    kafka: String,
    kubeconfig: Option<PathBuf>,
    bin: Option<PathBuf>,
}

/// The repository root, known at compile time from this crate's place in it.
///
/// Read at run time: `cargo test` sets `CARGO_MANIFEST_DIR` to the package of the running
/// test (`crates/<name>`). A path fixed at compile time would name wherever this crate was
/// built first, and with a target directory shared between clones (as CI's is) that can be
/// another clone, since cargo reuses a build whose sources are unchanged.
pub fn repo_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("../..")
}

/// The test bed of this test binary, found or started on first use.
///
/// # Panics
/// When no bed is named in the environment and `testbed/bed.sh up` fails; the message says
/// which component failed and which log to read.
pub fn testbed() -> &'static TestBed {
    static BED: OnceLock<Result<TestBed, String>> = OnceLock::new();
    match BED.get_or_init(|| TestBed::find_or_start().map_err(|e| format!("{e:#}"))) {
        Ok(bed) => bed,
        Err(e) => panic!("shop-testkit: no test bed: {e}"),
    }
}

impl TestBed {
    fn find_or_start() -> anyhow::Result<Self> {
        if let Some(bed) = Self::from_vars(|k| std::env::var(k).ok()) {
            return Ok(bed);
        }
        let script = repo_dir().join("testbed/bed.sh");
        eprintln!(
            "shop-testkit: SHOPSTREAM_KAFKA not set, running {} up",
            script.display()
        );
        let status = Command::new("bash")
            .arg(&script)
            .arg("up")
            .status()
            .with_context(|| format!("running {}", script.display()))?;
        if !status.success() {
            bail!(
                "{} up failed ({status}); its output above names the log to read",
                script.display()
            );
        }
        let output = Command::new("bash")
            .arg(&script)
            .arg("env")
            .output()
            .with_context(|| format!("running {} env", script.display()))?;
        if !output.status.success() {
            bail!(
                "{} env failed after up: {}",
                script.display(),
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        let env_file = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        let text = std::fs::read_to_string(&env_file)
            .with_context(|| format!("reading {}", env_file.display()))?;
        let vars = parse_env_file(&text);
        Self::from_vars(|k| vars.get(k).cloned())
            .with_context(|| format!("{} does not set SHOPSTREAM_KAFKA", env_file.display()))
    }

    fn from_vars(get: impl Fn(&str) -> Option<String>) -> Option<Self> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        Some(Self {
            kafka: nonempty("SHOPSTREAM_KAFKA")?,
            kubeconfig: nonempty("SHOPSTREAM_KUBECONFIG").map(PathBuf::from),
            bin: nonempty("SHOPSTREAM_TESTBED_BIN").map(PathBuf::from),
        })
    }

    /// The broker's bootstrap address, `host:port`.
    pub fn kafka_bootstrap(&self) -> &str {
        &self.kafka
    }

    /// The kubeconfig of the bed's API server.
    pub fn kubeconfig(&self) -> anyhow::Result<&Path> {
        self.kubeconfig.as_deref().context(
            "this test needs the test bed's API server, but SHOPSTREAM_KUBECONFIG is not set: \
             run `make testbed-up` and `source \"$(testbed/bed.sh env)\"`",
        )
    }

    /// A command for one of the bed's binaries (`kubectl`, `helm`, ...), taken from the bed's
    /// bin directory and pointed at the bed's API server.
    pub fn command(&self, program: &str) -> anyhow::Result<Command> {
        let program = match &self.bin {
            Some(bin) => bin.join(program),
            None => PathBuf::from(program),
        };
        let mut cmd = Command::new(program);
        cmd.env("KUBECONFIG", self.kubeconfig()?);
        Ok(cmd)
    }
}

/// Reads `export NAME=VALUE` lines (values optionally single-quoted), as `bed.sh` writes.
fn parse_env_file(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|line| line.trim().strip_prefix("export "))
        .filter_map(|assignment| assignment.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.trim_matches('\'').to_owned()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn env_file_is_read_like_the_shell_reads_it() {
        let vars = parse_env_file(
            "# written by testbed/bed.sh\n\
             export SHOPSTREAM_KAFKA='127.0.0.1:19092'\n\
             export SHOPSTREAM_KUBECONFIG='/tmp/a b/kubeconfig'\n\
             export PATH=\"/x/bin:$PATH\"\n",
        );
        assert_eq!(vars["SHOPSTREAM_KAFKA"], "127.0.0.1:19092");
        assert_eq!(vars["SHOPSTREAM_KUBECONFIG"], "/tmp/a b/kubeconfig");
    }

    #[test]
    fn a_bed_needs_at_least_a_broker() {
        assert!(TestBed::from_vars(|_| None).is_none());
        let bed = TestBed::from_vars(|k| (k == "SHOPSTREAM_KAFKA").then(|| "h:1".into()));
        let bed = bed.unwrap();
        assert_eq!(bed.kafka_bootstrap(), "h:1");
        assert!(bed.kubeconfig().is_err());
    }
}
