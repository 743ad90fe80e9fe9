//! The fleet as a job owner sees it: every twin of the deployment, read whole from
//! `iot.device-state` (the twins' changelog) by every jobs instance. From it come what
//! jobs need about devices owned by any instance: their reported state (a software
//! update succeeds on `reported.firmware`, a configuration change when the reported
//! state shows its desired patch; selectors match reported fields), the state
//! of the jobs' commands in their journals, and when their alarms were created (the
//! canary criterion).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;

use fleetwatch_protocol::{CommandState, Connectivity, DeviceId, JsonObject, TenantId};
use parking_lot::{Mutex, RwLock};

use crate::devices::Twin;
use crate::kafka::{HandleError, Record, RecordHandler};
use crate::metrics::Metrics;

/// What jobs keep of one twin.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DeviceView {
    pub tenant: Option<TenantId>,
    pub online: bool,
    pub reported: JsonObject,
    /// What the device is asked to be (configuration jobs' patches land here).
    pub desired: JsonObject,
    /// The state of each job command in the journal (command id → state).
    pub job_commands: HashMap<String, CommandState>,
    /// (alarm id, created ms) of its most recent alarms, oldest first.
    pub alarms: VecDeque<(String, i64)>,
}

/// Every twin, by device.
pub struct FleetView {
    devices: RwLock<HashMap<DeviceId, DeviceView>>,
    alarms_per_device: usize,
    /// Partition → offset to reach before the view counts as loaded (`None` until the
    /// reader started).
    remaining: Mutex<Option<crate::kafka::CatchUp>>,
    loaded: std::sync::atomic::AtomicBool,
}

impl FleetView {
    pub fn new(alarms_per_device: usize) -> Self {
        Self {
            devices: RwLock::default(),
            alarms_per_device: alarms_per_device.max(1),
            remaining: Mutex::new(None),
            loaded: false.into(),
        }
    }

    /// The reader starts: the view is loaded once it reached these offsets.
    pub fn start(&self, end_offsets: HashMap<i32, i64>) {
        *self.remaining.lock() = Some(crate::kafka::CatchUp::new(end_offsets));
        self.reached(None);
    }

    pub fn is_loaded(&self) -> bool {
        self.loaded.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn reached(&self, position: Option<(i32, i64)>) {
        if self.is_loaded() {
            return;
        }
        let mut remaining = self.remaining.lock();
        let Some(remaining) = remaining.as_mut() else {
            return;
        };
        if remaining.reached(position) {
            self.loaded
                .store(true, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Apply a twin record (`None`: the device was decommissioned).
    pub fn apply(&self, device_id: DeviceId, twin: Option<Twin>) {
        let mut devices = self.devices.write();
        let Some(mut twin) = twin else {
            devices.remove(&device_id);
            return;
        };
        let extras = twin.take_extras();
        let view = devices.entry(device_id).or_default();
        view.tenant = twin.tenant;
        view.online = twin.connectivity == Some(Connectivity::Online);
        view.reported = twin.reported;
        view.desired = extras.desired;
        for command in extras.commands {
            if command.command_id.starts_with("job-") {
                view.job_commands.insert(command.command_id, command.state);
            }
        }
        for alarm in extras.alarms {
            if !view.alarms.iter().any(|(id, _)| *id == alarm.alarm_id) {
                view.alarms.push_back((alarm.alarm_id, alarm.created_ms));
            }
        }
        view.alarms.make_contiguous().sort_by_key(|(_, at)| *at);
        while view.alarms.len() > self.alarms_per_device {
            view.alarms.pop_front();
        }
    }

    /// Read one device's view.
    pub fn with<T>(&self, device_id: &DeviceId, read: impl FnOnce(Option<&DeviceView>) -> T) -> T {
        read(self.devices.read().get(device_id))
    }

    /// Read every device's view.
    pub fn with_all<T>(&self, read: impl FnOnce(&HashMap<DeviceId, DeviceView>) -> T) -> T {
        read(&self.devices.read())
    }
}

/// Reads `iot.device-state` into the [`FleetView`].
pub struct FleetHandler {
    pub fleet: Arc<FleetView>,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for FleetHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        let key = record.key_str();
        let position = Some((record.partition, record.offset));
        // Markers of the changelog's readers (`marker/…`) are no device id.
        let Ok(device_id) = DeviceId::parse(&key) else {
            self.fleet.reached(position);
            return Ok(());
        };
        if record.payload.is_empty() {
            self.fleet.apply(device_id, None);
        } else {
            match serde_json::from_slice::<Twin>(record.payload) {
                Ok(twin) => self.fleet.apply(device_id, Some(twin)),
                Err(error) => {
                    self.metrics
                        .skipped
                        .with_label_values(&["jobs", "undecodable"])
                        .inc();
                    tracing::debug!(%error, %key, "undecodable twin skipped by jobs");
                }
            }
        }
        self.fleet.reached(position);
        Ok(())
    }
}
