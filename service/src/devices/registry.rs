//! Where the device actors live: started on first sight or read back from the
//! changelog, spread over a few arbiter threads by a hash of the device id, and stopped
//! when their partition goes to another instance.

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use actix::{Actor, Addr};
use actix_rt::{Arbiter, ArbiterHandle};
use fleetwatch_protocol::{now_ms, DeviceId};
use parking_lot::{Mutex, RwLock};

use super::actor::{DeviceActor, Stop};
use super::changelog::Changelog;
use super::twin::Twin;
use super::Shared;
use crate::error::{Error, Result};
use crate::kafka::PartitionListener;

/// A live actor and the partition its device belongs to.
#[derive(Clone)]
struct LiveActor {
    addr: Addr<DeviceActor>,
    partition: i32,
}

/// The live actors of this instance.
#[derive(Default)]
pub struct LiveActors(RwLock<HashMap<DeviceId, LiveActor>>);

impl LiveActors {
    /// Remove the device's entry if it is still `addr` (a passivating actor leaving).
    pub fn remove_if(&self, device_id: &DeviceId, addr: &Addr<DeviceActor>) {
        let mut live = self.0.write();
        if live.get(device_id).is_some_and(|entry| &entry.addr == addr) {
            live.remove(device_id);
        }
    }
}

pub struct DeviceRegistry {
    arbiters: Vec<ArbiterHandle>,
    hasher: RandomState,
    shared: Arc<Shared>,
    assignment: Mutex<Assignment>,
}

/// What this instance owns, under one lock: a restore that ran while the assignment
/// changed must not mark its partition restored (its devices may have been forgotten, or
/// written by another owner, in between).
#[derive(Default)]
struct Assignment {
    /// The partitions this instance owns now.
    owned: Vec<i32>,
    /// Partitions whose twins were read from the changelog since they were assigned.
    restored: HashSet<i32>,
    /// Counts assignments, so a restore can tell whether one came while it read.
    generation: u64,
}

impl Assignment {
    fn unrestored(&self) -> Vec<i32> {
        (self.owned.iter().copied())
            .filter(|p| !self.restored.contains(p))
            .collect()
    }
}

/// How many times a partition's restore is tried when assignments keep coming while it
/// reads (each try reads the partition again).
const RESTORE_TRIES: usize = 3;

/// How long giving partitions away waits for twin writes in flight.
const REVOKE_FLUSH_TIMEOUT: Duration = Duration::from_secs(10);

impl DeviceRegistry {
    /// Must be called inside an actix `System` (the arbiters register with it).
    pub(super) fn new(shared: Arc<Shared>) -> Self {
        let count = if shared.config.arbiters == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            shared.config.arbiters
        };
        let arbiters = (0..count)
            .map(|_| {
                let arbiter = Arbiter::new();
                let handle = arbiter.handle();
                // The arbiter thread runs until the System stops.
                std::mem::forget(arbiter);
                handle
            })
            .collect::<Vec<_>>();
        // The actors' timers run on the first arbiter, as long as the System does.
        arbiters[0].spawn(shared.timers.clone().run());
        Self {
            arbiters,
            hasher: RandomState::new(),
            shared,
            assignment: Mutex::new(Assignment::default()),
        }
    }

    /// The thread the role's consumer runs on: the first arbiter, where all actors live
    /// when `devices.arbiters` is 1.
    pub fn home_arbiter(&self) -> &ArbiterHandle {
        &self.arbiters[0]
    }

    /// Keep `fleetwatch_device_partitions_unrestored` (readiness) current.
    fn count_unrestored(&self, assignment: &Assignment) {
        let unrestored = assignment.unrestored().len() as i64;
        self.shared
            .metrics
            .device_partitions_unrestored
            .set(unrestored);
    }

    /// Owned partitions not restored yet.
    pub fn unrestored(&self) -> Vec<i32> {
        self.assignment.lock().unrestored()
    }

    pub fn changelog(&self) -> &Arc<Changelog> {
        &self.shared.changelog
    }

    /// Start an actor for `twin`, unless the device has one already.
    pub fn start(&self, twin: Twin, partition: i32) -> Addr<DeviceActor> {
        let mut live = self.shared.live.0.write();
        if let Some(existing) = live.get(&twin.device_id) {
            return existing.addr.clone();
        }
        let shard = self.hasher.hash_one(&twin.device_id) as usize % self.arbiters.len();
        let device_id = twin.device_id.clone();
        let shared = self.shared.clone();
        let addr = DeviceActor::start_in_arbiter(&self.arbiters[shard], move |_| {
            DeviceActor::new(twin, shared)
        });
        live.insert(
            device_id,
            LiveActor {
                addr: addr.clone(),
                partition,
            },
        );
        addr
    }

    /// Make sure `partition`'s twins were read from the changelog since it was assigned.
    /// Twins with work to do (online, or commands waiting) get a live actor; the others
    /// stay passivated until a message comes for them.
    pub async fn ensure_restored(&self, partition: i32) -> Result<()> {
        for _ in 0..RESTORE_TRIES {
            let generation = {
                let assignment = self.assignment.lock();
                if assignment.restored.contains(&partition) {
                    return Ok(());
                }
                assignment.generation
            };
            let twins = self.shared.changelog.restore_partition(partition).await?;
            let mut assignment = self.assignment.lock();
            if assignment.generation != generation {
                continue;
            }
            if !assignment.owned.contains(&partition) {
                // Its record must not be handled here without its twins: the consume
                // loop retries it, sees the partition gone and leaves it to the owner.
                return Err(Error::Interrupted(format!(
                    "partition {partition} was revoked while restoring"
                )));
            }
            self.shared.changelog.index_restored(partition, &twins);
            let mut started = 0;
            for (twin, _) in twins {
                if twin.is_online() || twin.pending_commands() > 0 {
                    self.start(twin, partition);
                    started += 1;
                }
            }
            assignment.restored.insert(partition);
            self.count_unrestored(&assignment);
            tracing::info!(partition, started, "partition restored");
            return Ok(());
        }
        Err(Error::Interrupted(format!(
            "restoring partition {partition}: the assignment changed {RESTORE_TRIES} times meanwhile"
        )))
    }

    /// The device's actor: live, read back from the changelog, or (with `create`) new.
    pub async fn actor_for(
        &self,
        device_id: &DeviceId,
        partition: i32,
        create: bool,
    ) -> Result<Option<Addr<DeviceActor>>> {
        if let Some(addr) = self.get(device_id) {
            return Ok(Some(addr));
        }
        let twin = match self.shared.changelog.read(device_id).await? {
            Some(twin) => twin,
            None if create => {
                let mut twin = Twin::new(device_id.clone());
                twin.tenant = self.shared.directory.tenant_of(device_id);
                twin
            }
            None => return Ok(None),
        };
        Ok(Some(self.start(twin, partition)))
    }

    /// Forget a device's actor that turned out to be stopped (it passivated between
    /// lookup and send).
    pub fn forget(&self, device_id: &DeviceId, addr: &Addr<DeviceActor>) {
        self.shared.live.remove_if(device_id, addr);
    }

    pub fn get(&self, device_id: &DeviceId) -> Option<Addr<DeviceActor>> {
        self.shared
            .live
            .0
            .read()
            .get(device_id)
            .map(|live| live.addr.clone())
    }

    /// Every live actor, ordered by device id.
    pub fn all(&self) -> Vec<(DeviceId, Addr<DeviceActor>)> {
        let mut all: Vec<_> = self
            .shared
            .live
            .0
            .read()
            .iter()
            .map(|(id, live)| (id.clone(), live.addr.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Live actors.
    pub fn len(&self) -> usize {
        self.shared.live.0.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Devices of the owned partitions, live or passivated.
    pub fn known_devices(&self) -> usize {
        self.shared.changelog.known_devices().max(self.len())
    }
}

impl PartitionListener for DeviceRegistry {
    /// Before partitions go away, every twin write in flight must land, so the next
    /// owner reads it. Partitions lost (this instance was thrown out of the group) may
    /// have had another owner since: nothing live can be trusted, restore afresh.
    fn revoked(&self, _partitions: &[i32], lost: bool) {
        self.shared.changelog.flush(REVOKE_FLUSH_TIMEOUT);
        if lost {
            self.assigned(&[]);
        }
    }

    /// Keep the actors of partitions this instance still owns (nobody else owned them
    /// in between); stop the others.
    fn assigned(&self, partitions: &[i32]) {
        let owned: HashSet<i32> = partitions.iter().copied().collect();
        // Held throughout, before the actors' lock, as a restore takes them.
        let mut assignment = self.assignment.lock();
        assignment.generation += 1;
        let stopped: Vec<Addr<DeviceActor>> = {
            let mut live = self.shared.live.0.write();
            let gone: Vec<DeviceId> = live
                .iter()
                .filter(|(_, actor)| !owned.contains(&actor.partition))
                .map(|(id, _)| id.clone())
                .collect();
            gone.iter()
                .filter_map(|id| live.remove(id).map(|actor| actor.addr))
                .collect()
        };
        for addr in &stopped {
            addr.do_send(Stop);
        }
        assignment.restored.retain(|p| owned.contains(p));
        assignment.owned = partitions.to_vec();
        self.count_unrestored(&assignment);
        self.shared
            .changelog
            .forget_partitions(|p| owned.contains(&p));
        tracing::info!(
            partitions = ?partitions,
            stopped = stopped.len(),
            at_ms = now_ms(),
            "device partitions assigned"
        );
    }
}
