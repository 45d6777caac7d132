//! Leader election with a `coordination.k8s.io` Lease, so two controller replicas never
//! both act.
//!
//! The rules are client-go's `leaderelection`:
//!
//! - **Expiry by local observation.** A candidate never compares the holder's `renewTime`
//!   with its own wall clock (the two clocks may disagree). It records, on its own
//!   monotonic clock, when it last saw the Lease change (holder, `renewTime` or
//!   `resourceVersion`), and takes the Lease over only when `leaseDurationSeconds` passed
//!   since then without a change.
//! - **Renew deadline shorter than the lease duration.** The leader counts itself leader
//!   only until [`RENEW_DEADLINE`] after the start of its last successful renewal; every
//!   attempt is bounded by a timeout and by that deadline. When it passes, the leader steps
//!   down, which is [`LEASE_DURATION`] − [`RENEW_DEADLINE`] before any standby can have
//!   seen the Lease unrenewed for [`LEASE_DURATION`].
//! - **Optimistic concurrency.** Every write carries the `resourceVersion` read just before,
//!   so of two candidates racing for an expired Lease exactly one wins. A 409 is not a loss:
//!   the Lease is read again and the attempt repeated within the deadline.
//! - **Release after stopping.** The Lease is renewed until [`Leadership::release`], which
//!   the caller invokes once everything the leadership guarded has stopped; only then is
//!   the holder cleared so that a standby need not wait for the Lease to expire.
//!
//! What no Lease can give is fencing: a leader that is paused between its check and its
//! write may still write late. [`LeaderGuard::holds`] is checked before each reconcile
//! starts, so after a pause only the reconciles that were already running can finish.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use shop_runtime::CancellationToken;
use tokio::time::Instant;
use tracing::{debug, info, warn};

/// How long a Lease stays valid, for others, after they last saw it change.
pub const LEASE_DURATION: Duration = Duration::from_secs(15);
/// How long the leader counts itself leader after the start of its last successful
/// renewal. Shorter than [`LEASE_DURATION`]; the difference absorbs clocks that run at
/// slightly different rates and the time from a check to the write it guards.
pub const RENEW_DEADLINE: Duration = Duration::from_secs(10);
/// How often the leader renews, and how often a standby looks at the Lease.
pub const RETRY_PERIOD: Duration = Duration::from_secs(2);
/// The longest single read or write of the Lease.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(4);

// The leader steps down before any standby may take over, with room to spare; and a
// single slow request cannot use up the whole deadline.
const _: () = assert!(RENEW_DEADLINE.as_secs() + RETRY_PERIOD.as_secs() < LEASE_DURATION.as_secs());
const _: () = assert!(ATTEMPT_TIMEOUT.as_secs() < RENEW_DEADLINE.as_secs());

/// What a candidate last saw of the Lease, and when by its own monotonic clock.
#[derive(Debug, Clone, PartialEq)]
struct Observation {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    resource_version: Option<String>,
    duration: Duration,
    since: Instant,
}

impl Observation {
    /// `lease` as seen at `now`; the time of `previous` is kept when nothing changed, so a
    /// holder that stopped renewing expires however often the Lease is read.
    fn of(lease: &Lease, previous: Option<&Observation>, now: Instant) -> Self {
        let spec = lease.spec.clone().unwrap_or_default();
        let seconds = spec.lease_duration_seconds.unwrap_or(0);
        let observed = Self {
            holder: spec.holder_identity.filter(|holder| !holder.is_empty()),
            renew_time: spec.renew_time,
            resource_version: lease.metadata.resource_version.clone(),
            duration: u64::try_from(seconds)
                .ok()
                .filter(|&s| s > 0)
                .map_or(LEASE_DURATION, Duration::from_secs),
            since: now,
        };
        match previous {
            Some(previous) if previous.same_record(&observed) => Self {
                since: previous.since,
                ..observed
            },
            _ => observed,
        }
    }

    fn same_record(&self, other: &Self) -> bool {
        self.holder == other.holder
            && self.renew_time == other.renew_time
            && self.resource_version == other.resource_version
    }

    /// Whether the holder has gone unseen for the Lease's duration.
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= self.duration
    }

    /// Whether `identity` may write itself into the Lease: it is free, ours, or its holder
    /// has not renewed it for its whole duration as far as this candidate has seen.
    fn may_take(&self, identity: &str, now: Instant) -> bool {
        match self.holder.as_deref() {
            None => true,
            Some(holder) => holder == identity || self.expired(now),
        }
    }
}

/// The outcome of one read-then-write of the Lease.
#[derive(Debug, PartialEq)]
enum Attempt {
    /// The Lease now names this identity, renewed just now.
    Held,
    /// Another holder has it (and, for a standby, has not let it expire).
    HeldBy(String),
    /// The Lease changed between the read and the write; read again.
    Conflict,
}

/// A Lease-based elector for one identity.
#[derive(Debug)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
    observed: Option<Observation>,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            observed: None,
        }
    }

    /// Waits until this identity leads (or `shutdown` fires: `None`), then keeps the Lease
    /// renewed in the background until [`Leadership::release`].
    pub async fn lead(mut self, shutdown: &CancellationToken) -> Option<Leadership> {
        let started = loop {
            let started = Instant::now();
            let attempt = tokio::time::timeout(ATTEMPT_TIMEOUT, self.try_acquire(false));
            let outcome = tokio::select! {
                () = shutdown.cancelled() => return None,
                outcome = attempt => outcome,
            };
            match outcome {
                Ok(Ok(Attempt::Held)) => break started,
                Ok(Ok(Attempt::HeldBy(_) | Attempt::Conflict)) => {}
                Ok(Err(error)) => {
                    warn!(lease = %self.name, %error, "leader election failed; retrying")
                }
                Err(_) => warn!(lease = %self.name, "leader election timed out; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(RETRY_PERIOD) => {}
            }
        };
        info!(lease = %self.name, identity = %self.identity, "became leader");
        let guard = LeaderGuard {
            token: shutdown.child_token(),
            valid_until: Arc::new(Mutex::new(started + RENEW_DEADLINE)),
        };
        let stop = CancellationToken::new();
        let renewing = tokio::spawn(self.keep_renewed(guard.clone(), stop.clone()));
        Some(Leadership {
            guard,
            stop,
            renewing,
        })
    }

    /// Renews every [`RETRY_PERIOD`] until `stop`; steps down (cancels the guard's token)
    /// when the Lease is found with another holder or the renew deadline passes. Returns
    /// the elector, for the release.
    async fn keep_renewed(mut self, guard: LeaderGuard, stop: CancellationToken) -> Self {
        loop {
            tokio::select! {
                () = stop.cancelled() => return self,
                () = tokio::time::sleep(RETRY_PERIOD) => {}
            }
            // Attempts until one succeeds, the Lease is lost, or the deadline passes.
            loop {
                let deadline = guard.valid_until();
                let started = Instant::now();
                // Not the guard's token: on shutdown the Lease stays renewed until the
                // release, while the controller drains.
                if started >= deadline {
                    warn!(lease = %self.name, "lease not renewed before the renew deadline; stepping down");
                    guard.token.cancel();
                    return self;
                }
                let bound = deadline.min(started + ATTEMPT_TIMEOUT);
                let attempt = tokio::time::timeout_at(bound, self.try_acquire(true));
                let outcome = tokio::select! {
                    () = stop.cancelled() => return self,
                    outcome = attempt => outcome,
                };
                match outcome {
                    Ok(Ok(Attempt::Held)) => {
                        guard.extend(started + RENEW_DEADLINE);
                        break;
                    }
                    Ok(Ok(Attempt::HeldBy(holder))) => {
                        warn!(lease = %self.name, %holder, "leadership taken over; stepping down");
                        guard.token.cancel();
                        return self;
                    }
                    Ok(Ok(Attempt::Conflict)) => {
                        debug!(lease = %self.name, "lease changed while renewing; reading it again");
                    }
                    Ok(Err(error)) => {
                        warn!(lease = %self.name, %error, "lease renewal failed; retrying");
                        let pause =
                            tokio::time::sleep_until(deadline.min(Instant::now() + RETRY_PERIOD));
                        tokio::select! {
                            () = stop.cancelled() => return self,
                            () = pause => {}
                        }
                    }
                    Err(_) => warn!(lease = %self.name, "lease renewal timed out; retrying"),
                }
            }
        }
    }

    /// Reads the Lease and, when this identity may hold it, writes itself in as holder.
    /// A `leading` elector never takes the Lease back from another holder: finding one
    /// means it lost the Lease at some point, whatever the Lease says about expiry.
    async fn try_acquire(&mut self, leading: bool) -> Result<Attempt, kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(Timestamp::now(), None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(created) => {
                    self.observe(&created);
                    Ok(Attempt::Held)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
                Err(e) => Err(e),
            };
        };
        let observed = self.observe(&lease);
        let ours = observed.holder.as_deref() == Some(self.identity.as_str());
        let now = Instant::now();
        if let Some(holder) = observed.holder.as_ref().filter(|_| !ours)
            && (leading || !observed.may_take(&self.identity, now))
        {
            return Ok(Attempt::HeldBy(holder.clone()));
        }
        let spec = lease.spec.take().unwrap_or_default();
        let acquired = if ours { spec.acquire_time } else { None };
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(!ours);
        lease.spec = Some(self.spec(Timestamp::now(), acquired, transitions));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(written) => {
                self.observe(&written);
                Ok(Attempt::Held)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Conflict),
            Err(e) => Err(e),
        }
    }

    /// Records `lease` as seen now (after the read returned: the later the observation,
    /// the later a silent holder expires), and logs a change of holder.
    fn observe(&mut self, lease: &Lease) -> Observation {
        let observed = Observation::of(lease, self.observed.as_ref(), Instant::now());
        let previous_holder = self.observed.as_ref().map(|o| o.holder.clone());
        if previous_holder.as_ref() != Some(&observed.holder) {
            info!(
                lease = %self.name,
                holder = observed.holder.as_deref().unwrap_or(""),
                "lease holder observed"
            );
        }
        self.observed = Some(observed.clone());
        observed
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: i32::try_from(LEASE_DURATION.as_secs()).ok(),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    /// Clears the holder if it is still this identity, so a standby takes over at once.
    /// The write carries the resourceVersion just read: a Lease someone else took in the
    /// meantime is left alone.
    async fn release(&self) {
        let read = tokio::time::timeout(ATTEMPT_TIMEOUT, self.api.get_opt(&self.name)).await;
        let Ok(Ok(Some(mut lease))) = read else {
            warn!(lease = %self.name, "lease not released: it could not be read");
            return;
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.renew_time = None;
        let params = PostParams::default();
        let write = self.api.replace(&self.name, &params, &lease);
        match tokio::time::timeout(ATTEMPT_TIMEOUT, write).await {
            Ok(Ok(_)) => info!(lease = %self.name, "lease released"),
            Ok(Err(error)) => warn!(lease = %self.name, %error, "lease not released"),
            Err(_) => warn!(lease = %self.name, "lease not released: timed out"),
        }
    }
}

/// This replica's leadership: the Lease is renewed in the background until
/// [`Leadership::release`].
#[derive(Debug)]
pub struct Leadership {
    guard: LeaderGuard,
    stop: CancellationToken,
    renewing: tokio::task::JoinHandle<Elector>,
}

impl Leadership {
    /// What the work done as leader checks: its token ends the work, `holds` gates each
    /// step.
    pub fn guard(&self) -> LeaderGuard {
        self.guard.clone()
    }

    /// Whether leadership ended by itself (lost Lease, missed renew deadline) rather than
    /// by the caller's shutdown.
    pub fn lost(&self, shutdown: &CancellationToken) -> bool {
        self.guard.token.is_cancelled() && !shutdown.is_cancelled()
    }

    /// Stops renewing and releases the Lease if this replica still holds it. Call it only
    /// after everything that acted as leader has stopped: from the release on, a standby
    /// may take over at once.
    pub async fn release(self) {
        self.guard.token.cancel();
        self.stop.cancel();
        match self.renewing.await {
            Ok(elector) => elector.release().await,
            Err(error) => warn!(%error, "lease renewal task failed; lease left to expire"),
        }
    }
}

/// A cheap, cloneable view of a [`Leadership`] for the work it guards.
#[derive(Debug, Clone)]
pub struct LeaderGuard {
    token: CancellationToken,
    valid_until: Arc<Mutex<Instant>>,
}

impl LeaderGuard {
    /// Cancelled when leadership ends: Lease lost, renew deadline missed, or shutdown.
    pub fn token(&self) -> CancellationToken {
        self.token.clone()
    }

    /// Whether this replica still leads by its own clock. Checked before work starts: after
    /// the process was paused (SIGSTOP, a long GC-like stall, a frozen VM) a task may run
    /// before the renewal task has noticed the missed deadline; this check notices it
    /// first, and ends leadership on the spot.
    pub fn holds(&self) -> bool {
        if self.token.is_cancelled() {
            return false;
        }
        if Instant::now() < self.valid_until() {
            return true;
        }
        warn!("renew deadline passed; leadership ends");
        self.token.cancel();
        false
    }

    fn valid_until(&self) -> Instant {
        *self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn extend(&self, until: Instant) {
        let mut valid_until = self
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        *valid_until = (*valid_until).max(until);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lease(holder: Option<&str>, renewed: Timestamp, version: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("shop-controller".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(Into::into),
                lease_duration_seconds: Some(15),
                renew_time: Some(MicroTime(renewed)),
                ..LeaseSpec::default()
            }),
        }
    }

    fn long_ago() -> Timestamp {
        Timestamp::from_second(1_000_000_000).unwrap_or(Timestamp::UNIX_EPOCH)
    }

    #[test]
    fn a_holder_seen_renewing_keeps_the_lease_however_old_its_renew_time() {
        // Its clock is years behind ours, but it keeps renewing.
        let start = Instant::now();
        let mut seen = Observation::of(&lease(Some("a"), long_ago(), "1"), None, start);
        for (i, version) in ["2", "3", "4", "5"].into_iter().enumerate() {
            let now = start + RETRY_PERIOD * (u32::try_from(i).unwrap_or(0) + 1) * 3;
            seen = Observation::of(&lease(Some("a"), long_ago(), version), Some(&seen), now);
            assert!(!seen.may_take("b", now), "taken at renewal {version}");
        }
    }

    #[test]
    fn a_holder_unseen_for_the_lease_duration_may_be_replaced() {
        let (start, renewed) = (Instant::now(), Timestamp::now());
        let first = Observation::of(&lease(Some("a"), renewed, "1"), None, start);
        let later = start + LEASE_DURATION - Duration::from_millis(1);
        let same = Observation::of(&lease(Some("a"), renewed, "1"), Some(&first), later);
        assert_eq!(
            same.since, start,
            "an unchanged Lease keeps its first observation"
        );
        assert!(!same.may_take("b", later));
        assert!(same.may_take("b", start + LEASE_DURATION));
    }

    #[test]
    fn a_change_restarts_the_count() {
        let start = Instant::now();
        let first = Observation::of(&lease(Some("a"), Timestamp::now(), "1"), None, start);
        let now = start + LEASE_DURATION;
        let renewed = Observation::of(&lease(Some("a"), Timestamp::now(), "2"), Some(&first), now);
        assert_eq!(renewed.since, now);
        assert!(!renewed.may_take("b", now));
    }

    #[test]
    fn a_released_or_own_lease_may_be_taken_at_once() {
        let now = Instant::now();
        let released = Observation::of(&lease(None, Timestamp::now(), "1"), None, now);
        assert!(released.may_take("b", now));
        let emptied = Observation::of(&lease(Some(""), Timestamp::now(), "1"), None, now);
        assert!(emptied.may_take("b", now));
        let own = Observation::of(&lease(Some("b"), Timestamp::now(), "1"), None, now);
        assert!(own.may_take("b", now));
    }

    #[test]
    fn the_guard_ends_leadership_when_the_renew_deadline_has_passed() {
        let guard = LeaderGuard {
            token: CancellationToken::new(),
            valid_until: Arc::new(Mutex::new(Instant::now() + RENEW_DEADLINE)),
        };
        assert!(guard.holds());
        *guard
            .valid_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Instant::now();
        assert!(!guard.holds());
        assert!(
            guard.token().is_cancelled(),
            "leadership ended for every task"
        );
        guard.extend(Instant::now() + RENEW_DEADLINE);
        assert!(!guard.holds(), "an ended leadership does not come back");
    }
}
