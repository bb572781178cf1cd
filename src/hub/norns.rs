//! The norn registry: create (upsert), read, replace, delete and expire norns, keeping the store
//! and the router in step. Only the owner (or an admin) sees a norn; to anyone else it does not
//! exist.

use std::sync::Arc;

use uuid::Uuid;

use super::Hub;
use super::subscription::Subscription;
use crate::auth::Principal;
use crate::event::now_ms;
use crate::metrics as m;
use crate::norn::{Norn, NornError, NornRequest, NornRules, ValidNorn};
use crate::store::StoreError;

/// Why a norn operation failed.
#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error(transparent)]
    Invalid(#[from] NornError),
    #[error("another principal has a norn for this device and destination")]
    Conflict,
    #[error("no such norn")]
    NotFound,
    #[error("the caller may not read events of {0}")]
    Forbidden(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl Hub {
    fn validate(&self, request: NornRequest, now: i64) -> Result<ValidNorn, NornError> {
        request.validate(
            &NornRules {
                max_duration: self.config.norns.max_duration,
                address_policy: &self.delivery.address_policy,
                nats_available: self.delivery.nats.is_some(),
            },
            now,
        )
    }

    /// The principal may only subscribe to keys it may read.
    fn check_key(principal: &Principal, valid: &ValidNorn) -> Result<(), RegistryError> {
        if principal.may_read(&valid.key) {
            Ok(())
        } else {
            Err(RegistryError::Forbidden(valid.key.clone()))
        }
    }

    /// Loads the stored norns into the router, deleting those that expired while brunnr was down.
    pub async fn load_norns(&self) -> Result<usize, StoreError> {
        let now = now_ms();
        let (mut live, mut expired) = (0, Vec::new());
        for norn in self.store.load_all().await? {
            if norn.is_expired(now) {
                expired.push(norn.id);
                continue;
            }
            let filter = match norn.filter.as_deref().map(super::filter::Filter::compile) {
                Some(Ok(filter)) => Some(filter),
                Some(Err(error)) => {
                    tracing::error!(norn = %norn.id, %error, "Stored filter no longer compiles; norn skipped.");
                    continue;
                }
                None => None,
            };
            self.router
                .insert(Arc::new(Subscription::new(norn, filter)));
            live += 1;
        }
        if !expired.is_empty() {
            self.store.delete_many(&expired).await?;
        }
        metrics::gauge!(m::NORNS).set(self.router.len() as f64);
        Ok(live)
    }

    fn visible(&self, principal: &Principal, id: Uuid) -> Option<Arc<Subscription>> {
        self.router
            .get(id)
            .filter(|s| principal.may_manage(&s.norn.owner))
            .filter(|s| !s.norn.is_expired(now_ms()))
    }

    /// The norn of `key` with the same destination, if any.
    fn same_pair(&self, valid: &ValidNorn) -> Option<Arc<Subscription>> {
        let identity = valid.destination.identity();
        self.router
            .subscriptions(&valid.key)
            .into_iter()
            .find(|s| s.norn.destination.identity() == identity && !s.norn.is_expired(now_ms()))
    }

    /// Creates a norn, or updates the caller's norn with the same key and destination. Returns the
    /// norn and whether it is new.
    pub async fn create_norn(
        &self,
        principal: &Principal,
        request: NornRequest,
    ) -> Result<(Norn, bool), RegistryError> {
        let now = now_ms();
        let valid = self.validate(request, now)?;
        Self::check_key(principal, &valid)?;
        let _write = self.writes.lock().await;
        match self.same_pair(&valid) {
            Some(existing) if existing.norn.owner != principal.name && !principal.is_admin() => {
                Err(RegistryError::Conflict)
            }
            Some(existing) => {
                let norn = self
                    .save(
                        valid,
                        existing.norn.id,
                        existing.norn.owner.clone(),
                        existing.norn.created_at_ms,
                        now,
                    )
                    .await?;
                Ok((norn, false))
            }
            None => {
                let norn = self
                    .save(valid, Uuid::now_v7(), principal.name.clone(), now, now)
                    .await?;
                Ok((norn, true))
            }
        }
    }

    /// Replaces a norn the caller can see.
    pub async fn replace_norn(
        &self,
        principal: &Principal,
        id: Uuid,
        mut request: NornRequest,
    ) -> Result<Norn, RegistryError> {
        let now = now_ms();
        let _write = self.writes.lock().await;
        let existing = self.visible(principal, id).ok_or(RegistryError::NotFound)?;
        request.restore_masked(&existing.norn.destination);
        let valid = self.validate(request, now)?;
        Self::check_key(principal, &valid)?;
        if let Some(other) = self.same_pair(&valid)
            && other.norn.id != id
        {
            return Err(RegistryError::Conflict);
        }
        self.save(
            valid,
            id,
            existing.norn.owner.clone(),
            existing.norn.created_at_ms,
            now,
        )
        .await
    }

    async fn save(
        &self,
        valid: ValidNorn,
        id: Uuid,
        owner: String,
        created_at_ms: i64,
        now: i64,
    ) -> Result<Norn, RegistryError> {
        let (filter_text, filter) = match valid.filter {
            Some((text, filter)) => (Some(text), Some(filter)),
            None => (None, None),
        };
        let norn = Norn {
            id,
            key: valid.key,
            destination: valid.destination,
            duration_ms: valid.duration_ms,
            filter: filter_text,
            expires_at_ms: valid.expires_at_ms,
            owner,
            created_at_ms,
            updated_at_ms: now,
        };
        self.store.put(&norn).await?;
        if let Some(replaced) = self
            .router
            .insert(Arc::new(Subscription::new(norn.clone(), filter)))
        {
            replaced.close();
        }
        metrics::gauge!(m::NORNS).set(self.router.len() as f64);
        Ok(norn)
    }

    pub fn get_norn(&self, principal: &Principal, id: Uuid) -> Option<Norn> {
        self.visible(principal, id).map(|s| s.norn.clone())
    }

    /// The caller's norns (all of them, for an admin), oldest first.
    pub fn list_norns(&self, principal: &Principal) -> Vec<Norn> {
        let now = now_ms();
        let mut norns: Vec<Norn> = self
            .router
            .all(|s| principal.may_manage(&s.norn.owner) && !s.norn.is_expired(now))
            .into_iter()
            .map(|s| s.norn.clone())
            .collect();
        norns.sort_by_key(|norn| norn.id);
        norns
    }

    pub async fn delete_norn(&self, principal: &Principal, id: Uuid) -> Result<(), RegistryError> {
        let _write = self.writes.lock().await;
        self.visible(principal, id).ok_or(RegistryError::NotFound)?;
        self.store.delete(id).await?;
        if let Some(removed) = self.router.remove(id) {
            removed.remove();
        }
        metrics::gauge!(m::NORNS).set(self.router.len() as f64);
        Ok(())
    }

    /// Removes expired norns; they already stopped receiving when they expired.
    pub async fn sweep_expired(&self) {
        let _write = self.writes.lock().await;
        let expired = self.router.take_expired(now_ms());
        if expired.is_empty() {
            return;
        }
        let ids: Vec<Uuid> = expired.iter().map(|s| s.norn.id).collect();
        for subscription in &expired {
            subscription.remove();
        }
        if let Err(error) = self.store.delete_many(&ids).await {
            tracing::error!(%error, count = ids.len(), "Expired norns not removed from the store; will retry at start-up.");
        }
        tracing::debug!(count = ids.len(), "Expired norns removed.");
        metrics::gauge!(m::NORNS).set(self.router.len() as f64);
    }

    pub fn norn_count(&self) -> usize {
        self.router.len()
    }
}
