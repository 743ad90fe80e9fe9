//! Where the device actors live: created on first sight, spread over a few arbiter
//! threads by a hash of the device id.

use std::collections::HashMap;
use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;

use actix::{Actor, Addr};
use actix_rt::{Arbiter, ArbiterHandle};
use fleetwatch_protocol::DeviceId;
use parking_lot::RwLock;

use super::actor::DeviceActor;
use super::DevicesConfig;
use crate::metrics::Metrics;

pub struct DeviceRegistry {
    arbiters: Vec<ArbiterHandle>,
    hasher: RandomState,
    actors: RwLock<HashMap<DeviceId, Addr<DeviceActor>>>,
    mailbox_capacity: usize,
    metrics: Arc<Metrics>,
}

impl DeviceRegistry {
    /// Must be called inside an actix `System` (the arbiters register with it).
    pub fn new(config: &DevicesConfig, metrics: Arc<Metrics>) -> Self {
        let count = if config.arbiters == 0 {
            std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            config.arbiters
        };
        let arbiters = (0..count)
            .map(|_| {
                let arbiter = Arbiter::new();
                let handle = arbiter.handle();
                // The arbiter thread runs until the System stops.
                std::mem::forget(arbiter);
                handle
            })
            .collect();
        Self {
            arbiters,
            hasher: RandomState::new(),
            actors: RwLock::new(HashMap::new()),
            mailbox_capacity: config.mailbox_capacity,
            metrics,
        }
    }

    /// The device's actor, started if it does not exist yet.
    pub fn get_or_start(&self, device_id: &DeviceId) -> Addr<DeviceActor> {
        if let Some(addr) = self.actors.read().get(device_id) {
            return addr.clone();
        }
        let mut actors = self.actors.write();
        actors
            .entry(device_id.clone())
            .or_insert_with(|| {
                let shard = self.hasher.hash_one(device_id) as usize % self.arbiters.len();
                let id = device_id.clone();
                let capacity = self.mailbox_capacity;
                self.metrics.device_actors.inc();
                DeviceActor::start_in_arbiter(&self.arbiters[shard], move |_| {
                    DeviceActor::new(id, capacity)
                })
            })
            .clone()
    }

    pub fn get(&self, device_id: &DeviceId) -> Option<Addr<DeviceActor>> {
        self.actors.read().get(device_id).cloned()
    }

    /// Every known device's actor, ordered by device id.
    pub fn all(&self) -> Vec<(DeviceId, Addr<DeviceActor>)> {
        let mut all: Vec<_> = self
            .actors
            .read()
            .iter()
            .map(|(id, addr)| (id.clone(), addr.clone()))
            .collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    pub fn len(&self) -> usize {
        self.actors.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
