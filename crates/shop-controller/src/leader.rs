//! Leader election with a `coordination.k8s.io` Lease, so two controller replicas never
//! both act.
//!
//! The leader renews the Lease every `RENEW`; a candidate takes it over only when it was
//! not renewed for `DURATION`. Updates carry the Lease's resourceVersion, so of two
//! candidates racing for an expired Lease the API server lets exactly one win. A leader
//! that cannot renew in time steps down (its token is cancelled) before another replica
//! may take over.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use shop_runtime::CancellationToken;
use tracing::{info, warn};

/// How long a Lease stays valid without renewal.
pub const DURATION: Duration = Duration::from_secs(15);
/// How often the leader renews.
pub const RENEW: Duration = Duration::from_secs(5);

/// A Lease-based elector for one identity.
#[derive(Debug, Clone)]
pub struct Elector {
    api: Api<Lease>,
    name: String,
    identity: String,
}

impl Elector {
    pub fn new(client: Client, namespace: &str, name: &str, identity: &str) -> Self {
        Self {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
        }
    }

    /// Waits until this identity leads, then keeps the Lease renewed in the background.
    /// The returned token is cancelled when leadership is lost or `shutdown` fires; on
    /// shutdown the Lease is released so a successor need not wait for it to expire.
    pub async fn lead(self, shutdown: CancellationToken) -> Option<CancellationToken> {
        loop {
            match self.try_acquire().await {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => warn!(lease = %self.name, %error, "leader election failed; retrying"),
            }
            tokio::select! {
                () = shutdown.cancelled() => return None,
                () = tokio::time::sleep(RENEW) => {}
            }
        }
        info!(lease = %self.name, identity = %self.identity, "became leader");
        let leading = shutdown.child_token();
        let token = leading.clone();
        tokio::spawn(async move {
            let mut last_renewal = tokio::time::Instant::now();
            loop {
                tokio::select! {
                    () = leading.cancelled() => break,
                    () = tokio::time::sleep(RENEW) => {}
                }
                match self.try_acquire().await {
                    Ok(true) => last_renewal = tokio::time::Instant::now(),
                    Ok(false) => {
                        warn!(lease = %self.name, "leadership taken over; stepping down");
                        leading.cancel();
                        return;
                    }
                    Err(error) if last_renewal.elapsed() + RENEW >= DURATION => {
                        warn!(lease = %self.name, %error, "lease not renewed in time; stepping down");
                        leading.cancel();
                        return;
                    }
                    Err(error) => {
                        warn!(lease = %self.name, %error, "lease renewal failed; retrying")
                    }
                }
            }
            self.release().await;
        });
        Some(token)
    }

    /// Takes or renews the Lease; false when another live holder has it.
    async fn try_acquire(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.spec(now, None, 0)),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.as_deref();
        let expired = spec.renew_time.as_ref().is_none_or(|renewed| {
            let valid =
                SignedDuration::from_secs(i64::from(spec.lease_duration_seconds.unwrap_or(15)));
            renewed.0.checked_add(valid).is_ok_and(|until| until < now)
        });
        if holder != Some(self.identity.as_str()) && !expired {
            return Ok(false);
        }
        let transitions =
            spec.lease_transitions.unwrap_or(0) + i32::from(holder != Some(self.identity.as_str()));
        let acquired = if holder == Some(self.identity.as_str()) {
            spec.acquire_time
        } else {
            None
        };
        lease.spec = Some(self.spec(now, acquired, transitions));
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn spec(&self, now: Timestamp, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(DURATION.as_secs() as i32),
            acquire_time: Some(acquired.unwrap_or(MicroTime(now))),
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }

    async fn release(&self) {
        if let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await {
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() == Some(self.identity.as_str()) {
                spec.holder_identity = None;
                spec.renew_time = None;
                if let Err(error) = self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    warn!(lease = %self.name, %error, "lease not released");
                }
            }
        }
    }
}
