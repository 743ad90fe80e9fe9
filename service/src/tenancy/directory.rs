//! Every instance's copy of `iot.device-directory`: which tenant each device belongs to.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use fleetwatch_protocol::{DeviceId, DirectoryEntry, TenantId};
use parking_lot::{Mutex, RwLock};
use tokio::sync::watch;

use super::ProvisioningRule;
use crate::kafka::{HandleError, Record, RecordHandler};
use crate::metrics::Metrics;

/// The fleet by tenant. Reads are lock-shared and cheap (a map lookup); writes come from
/// the directory topic only.
pub struct Directory {
    index: RwLock<Index>,
    rules: Vec<ProvisioningRule>,
    loaded: watch::Sender<bool>,
    metrics: Arc<Metrics>,
}

#[derive(Default)]
struct Index {
    tenant_of: BTreeMap<DeviceId, Option<TenantId>>,
    by_tenant: HashMap<Option<TenantId>, BTreeSet<DeviceId>>,
}

impl Index {
    fn set(&mut self, device_id: DeviceId, tenant: Option<TenantId>) {
        self.remove(&device_id);
        self.by_tenant
            .entry(tenant.clone())
            .or_default()
            .insert(device_id.clone());
        self.tenant_of.insert(device_id, tenant);
    }

    fn remove(&mut self, device_id: &DeviceId) {
        if let Some(old) = self.tenant_of.remove(device_id) {
            if let Some(set) = self.by_tenant.get_mut(&old) {
                set.remove(device_id);
                if set.is_empty() {
                    self.by_tenant.remove(&old);
                }
            }
        }
    }
}

/// One page of `GET /devices`.
pub struct Page {
    pub devices: Vec<(DeviceId, Option<TenantId>)>,
    /// The last id of this page when more may follow (`?after=` for the next one).
    pub next: Option<DeviceId>,
}

impl Directory {
    pub fn new(rules: Vec<ProvisioningRule>, metrics: Arc<Metrics>) -> Self {
        Self {
            index: RwLock::default(),
            rules,
            loaded: watch::Sender::new(false),
            metrics,
        }
    }

    /// A directory that is complete from the start (unit tests, and a process with no
    /// role that needs one).
    pub fn loaded(rules: Vec<ProvisioningRule>, metrics: Arc<Metrics>) -> Self {
        let directory = Self::new(rules, metrics);
        directory.loaded.send_replace(true);
        directory
    }

    /// The device's tenant: its assignment, else the provisioning rules' (a device not
    /// yet in the directory is about to be written there with exactly that).
    pub fn tenant_of(&self, device_id: &DeviceId) -> Option<TenantId> {
        match self.index.read().tenant_of.get(device_id) {
            Some(assigned) => assigned.clone(),
            None => self.provisioned(device_id),
        }
    }

    /// Whether the device is in the directory (seen and not decommissioned).
    pub fn knows(&self, device_id: &DeviceId) -> bool {
        self.index.read().tenant_of.contains_key(device_id)
    }

    /// The tenant the provisioning rules give a new device.
    pub fn provisioned(&self, device_id: &DeviceId) -> Option<TenantId> {
        self.rules
            .iter()
            .find(|rule| !rule.prefix.is_empty() && device_id.as_str().starts_with(&rule.prefix))
            .map(|rule| rule.tenant.clone())
    }

    /// Devices in id order after `after`, starting with `prefix`: every device for
    /// `tenant = None` (operators), else that tenant's.
    pub fn page(
        &self,
        tenant: Option<&TenantId>,
        prefix: &str,
        after: Option<&DeviceId>,
        limit: usize,
    ) -> Page {
        let index = self.index.read();
        let keep = |id: &DeviceId| id.as_str().starts_with(prefix) && Some(id) != after;
        let mut devices: Vec<(DeviceId, Option<TenantId>)> = match tenant {
            None => {
                let from = after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded);
                index
                    .tenant_of
                    .range((from, std::ops::Bound::Unbounded))
                    .filter(|(id, _)| keep(id))
                    .take(limit + 1)
                    .map(|(id, tenant)| (id.clone(), tenant.clone()))
                    .collect()
            }
            Some(tenant) => index
                .by_tenant
                .get(&Some(tenant.clone()))
                .into_iter()
                .flat_map(|ids| match after {
                    Some(after) => ids.range::<DeviceId, _>((
                        std::ops::Bound::Excluded(after),
                        std::ops::Bound::Unbounded,
                    )),
                    None => ids.range::<DeviceId, _>(..),
                })
                .filter(|id| keep(id))
                .take(limit + 1)
                .map(|id| (id.clone(), Some(tenant.clone())))
                .collect(),
        };
        let next = (devices.len() > limit).then(|| {
            devices.truncate(limit);
            devices.last().map(|(id, _)| id.clone())
        });
        Page {
            devices,
            next: next.flatten(),
        }
    }

    pub fn len(&self) -> usize {
        self.index.read().tenant_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the whole topic has been read once since start.
    pub fn is_loaded(&self) -> bool {
        *self.loaded.borrow()
    }

    /// Wait until the whole topic has been read once: ingest stamps events with their
    /// tenant only from then on.
    pub async fn wait_loaded(&self) {
        let mut loaded = self.loaded.subscribe();
        let _ = loaded.wait_for(|loaded| *loaded).await;
    }

    fn apply(&self, device_id: DeviceId, entry: Option<DirectoryEntry>) {
        let mut index = self.index.write();
        match entry {
            Some(entry) => index.set(device_id, entry.tenant),
            None => index.remove(&device_id),
        }
        self.metrics
            .directory_devices
            .set(index.tenant_of.len() as i64);
    }
}

/// Reads `iot.device-directory` into the [`Directory`], and says when it reached the
/// end offsets the topic had at start.
pub struct DirectoryHandler {
    pub directory: Arc<Directory>,
    /// Partition → offset to reach; emptied as the partitions are read.
    pub remaining: Mutex<crate::kafka::CatchUp>,
}

impl DirectoryHandler {
    pub fn new(directory: Arc<Directory>, end_offsets: HashMap<i32, i64>) -> Self {
        let handler = Self {
            directory,
            remaining: Mutex::new(crate::kafka::CatchUp::new(end_offsets)),
        };
        handler.reached(None);
        handler
    }

    fn reached(&self, position: Option<(i32, i64)>) {
        if self.directory.is_loaded() {
            return;
        }
        let mut remaining = self.remaining.lock();
        if remaining.reached(position) {
            self.directory.loaded.send_replace(true);
            tracing::info!(devices = self.directory.len(), "device directory loaded");
        }
    }
}

impl RecordHandler for DirectoryHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        let key = record.key_str();
        match DeviceId::parse(&key) {
            Ok(device_id) if record.payload.is_empty() => self.directory.apply(device_id, None),
            Ok(device_id) => match serde_json::from_slice::<DirectoryEntry>(record.payload) {
                Ok(entry) => self.directory.apply(device_id, Some(entry)),
                Err(error) => tracing::warn!(%error, %key, "undecodable directory record skipped"),
            },
            Err(error) => tracing::warn!(%error, %key, "directory record with a bad key skipped"),
        }
        self.reached(Some((record.partition, record.offset)));
        Ok(())
    }
}
