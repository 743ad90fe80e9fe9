//! The twin of one device and its command journal, as plain data with the rules that
//! change it. No actor, clock or I/O here: every method takes the time and returns what
//! must happen outside (persist, publish), so the rules are tested deterministically.

use std::borrow::Cow;
use std::ops::Deref;

use fleetwatch_models::names::Named;
use fleetwatch_protocol::{
    AckOutcome, AckPayload, Alarm, CommandPayload, CommandRecord, CommandState, CommandStep,
    Connectivity, DesiredPayload, DeviceEventBody, DeviceId, JsonObject, NewCommand,
    SequenceTracker, TelemetryPayload, TenantId,
};
use serde::{Deserialize, Serialize};

use super::config::TwinRules;

/// How many connectivity changes a twin remembers.
const CONNECTIVITY_HISTORY: usize = 8;

/// Why connectivity changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnectivityCause {
    /// A `status` message: the device's own, or its Last Will, which the broker sends
    /// when the connection drops or the keep-alive times out.
    StatusMessage,
    /// It sent something while marked offline.
    Activity,
    /// Nothing heard for `devices.twin.offline_after_ms`.
    Silence,
}

impl ConnectivityCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::StatusMessage => "status_message",
            Self::Activity => "activity",
            Self::Silence => "silence",
        }
    }
}

/// One change of connectivity, with its cause.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ConnectivityChange {
    pub to: Connectivity,
    /// Service clock, ms.
    pub at_ms: i64,
    pub cause: ConnectivityCause,
}

/// The last [`CONNECTIVITY_HISTORY`] changes of connectivity, oldest first. Exactly as
/// long as it is: changes come seldom (a reconnect), so the list is rebuilt then rather
/// than held with spare room, as a growing `VecDeque` would hold four from the first.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ConnectivityHistory(Box<[ConnectivityChange]>);

impl ConnectivityHistory {
    /// Append `change`, forgetting the oldest beyond [`CONNECTIVITY_HISTORY`].
    pub fn push(&mut self, change: ConnectivityChange) {
        let kept = self.0.len().min(CONNECTIVITY_HISTORY - 1);
        let kept = &self.0[self.0.len() - kept..];
        self.0 = kept.iter().cloned().chain([change]).collect();
    }
}

impl Deref for ConnectivityHistory {
    type Target = [ConnectivityChange];

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

/// Everything the service knows about a device. This is also the record on
/// `iot.device-state`, so every field survives a restart or a rebalance.
///
/// A live twin is held per device, so what most devices never have (a desired state,
/// commands, alarms) is boxed in [`TwinExtras`]: a typical twin pays one pointer for
/// it. On the wire the twin is the flat record it always was ([`TwinRecord`]).
#[derive(Clone, Debug, PartialEq)]
pub struct Twin {
    pub device_id: DeviceId,
    /// Increases with every change that is persisted (reported, desired, connectivity,
    /// commands). Telemetry alone does not count: it would change it every second.
    pub version: u64,
    /// What the device reported on `devices/{id}/state`, merged key by key.
    pub reported: JsonObject,
    /// Service clock (ms) of the last reported-state change.
    pub reported_ms: Option<i64>,
    /// `None` until the device said or showed anything.
    pub connectivity: Option<Connectivity>,
    pub connectivity_history: ConnectivityHistory,
    /// When the last event arrived (service clock, ms).
    pub last_seen_ms: Option<i64>,
    pub telemetry: Option<LastTelemetry>,
    pub sequence: SequenceTracker,
    /// The newest `iot.telemetry` record applied to this twin: after a crash the records
    /// from the last committed offset come again, and those this twin already holds
    /// (its changelog record was written after them) are not applied twice.
    pub applied: Option<SourcePosition>,
    /// Events applied, and duplicates dropped.
    pub events: u64,
    pub duplicates: u64,
    /// The tenant the device belongs to (`None`: operators only). Set by operators or,
    /// for a new device, by the provisioning rules.
    pub tenant: Option<TenantId>,
    /// Whether `iot.device-directory` has this twin with its current tenant; the next
    /// twin write lists it when not.
    pub listed: bool,
    /// `None` while every part of it is empty (read with [`Twin::desired`] and the
    /// like, written through [`Twin::extras_mut`]).
    extras: Option<Box<TwinExtras>>,
}

/// The parts of a twin most devices never have.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TwinExtras {
    /// Increases with every desired-state write; `If-Match` compares against it.
    pub desired_version: u64,
    pub desired: JsonObject,
    /// Service clock (ms) of the last desired-state change.
    pub desired_ms: Option<i64>,
    /// Pending commands and the most recent finished ones, oldest first.
    pub commands: Vec<CommandRecord>,
    /// Active alarms and the most recent cleared ones (`alarms.rs`).
    pub alarms: Vec<Alarm>,
}

/// A twin as `iot.device-state` and the REST API carry it: every field flat, in this
/// order. Borrowed from the twin when written, owned when read.
#[derive(Serialize, Deserialize)]
struct TwinRecord<'a> {
    device_id: Cow<'a, DeviceId>,
    version: u64,
    desired_version: u64,
    desired: Cow<'a, JsonObject>,
    reported: Cow<'a, JsonObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    reported_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    desired_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    connectivity: Option<Connectivity>,
    #[serde(default, skip_serializing_if = "no_changes")]
    connectivity_history: Cow<'a, ConnectivityHistory>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    last_seen_ms: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    telemetry: Option<Cow<'a, LastTelemetry>>,
    #[serde(default)]
    sequence: Cow<'a, SequenceTracker>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    applied: Option<SourcePosition>,
    #[serde(default, skip_serializing_if = "is_empty")]
    commands: Cow<'a, [CommandRecord]>,
    #[serde(default)]
    events: u64,
    #[serde(default)]
    duplicates: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    tenant: Option<Cow<'a, TenantId>>,
    #[serde(default)]
    listed: bool,
    #[serde(default, skip_serializing_if = "is_empty")]
    alarms: Cow<'a, [Alarm]>,
}

fn no_changes(history: &impl Deref<Target = ConnectivityHistory>) -> bool {
    history.is_empty()
}

fn is_empty<T>(items: &impl Deref<Target = [T]>) -> bool {
    items.is_empty()
}

impl Serialize for Twin {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        TwinRecord {
            device_id: Cow::Borrowed(&self.device_id),
            version: self.version,
            desired_version: self.desired_version(),
            desired: Cow::Borrowed(self.desired()),
            reported: Cow::Borrowed(&self.reported),
            reported_ms: self.reported_ms,
            desired_ms: self.desired_ms(),
            connectivity: self.connectivity,
            connectivity_history: Cow::Borrowed(&self.connectivity_history),
            last_seen_ms: self.last_seen_ms,
            telemetry: self.telemetry.as_ref().map(Cow::Borrowed),
            sequence: Cow::Borrowed(&self.sequence),
            applied: self.applied,
            commands: Cow::Borrowed(self.commands()),
            events: self.events,
            duplicates: self.duplicates,
            tenant: self.tenant.as_ref().map(Cow::Borrowed),
            listed: self.listed,
            alarms: Cow::Borrowed(self.alarms()),
        }
        .serialize(serializer)
    }
}

impl<'de> Deserialize<'de> for Twin {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let record = TwinRecord::deserialize(deserializer)?;
        let extras = TwinExtras {
            desired_version: record.desired_version,
            desired: record.desired.into_owned(),
            desired_ms: record.desired_ms,
            commands: record.commands.into_owned(),
            alarms: record.alarms.into_owned(),
        };
        Ok(Self {
            device_id: record.device_id.into_owned(),
            version: record.version,
            reported: record.reported.into_owned(),
            reported_ms: record.reported_ms,
            connectivity: record.connectivity,
            connectivity_history: record.connectivity_history.into_owned(),
            last_seen_ms: record.last_seen_ms,
            telemetry: record.telemetry.map(Cow::into_owned),
            sequence: record.sequence.into_owned(),
            applied: record.applied,
            events: record.events,
            duplicates: record.duplicates,
            tenant: record.tenant.map(Cow::into_owned),
            listed: record.listed,
            extras: (extras != TwinExtras::default()).then(|| Box::new(extras)),
        })
    }
}

/// Where a device event was read: its `iot.telemetry` partition and offset.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SourcePosition {
    pub partition: i32,
    pub offset: i64,
}

/// The last telemetry reading, kept compactly: a live twin holds one per device, and
/// values by shared names cost a fifth of the map the wire format uses. Serialized as
/// that map all the same.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LastTelemetry {
    pub ts: i64,
    pub seq: u64,
    #[serde(with = "metrics_as_map")]
    pub metrics: Named<f64>,
}

impl LastTelemetry {
    /// Make `last` hold `payload`: its values overwritten in place when the names are
    /// those of the previous reading (a device usually sends the same metrics every
    /// time), so a reading costs the twin no allocation.
    fn keep(last: &mut Option<Self>, payload: &TelemetryPayload) {
        if let Some(last) = last {
            let names = last.metrics.names();
            let same_names = names.len() == payload.metrics.len()
                && names
                    .iter()
                    .zip(payload.metrics.keys())
                    .all(|(kept, name)| kept == name);
            if same_names {
                last.ts = payload.ts;
                last.seq = payload.seq;
                for (kept, value) in last
                    .metrics
                    .values_mut()
                    .iter_mut()
                    .zip(payload.metrics.values())
                {
                    *kept = *value;
                }
                return;
            }
        }
        let pairs = (payload.metrics.iter()).map(|(name, value)| (name.as_str().into(), *value));
        *last = Some(Self {
            ts: payload.ts,
            seq: payload.seq,
            metrics: metrics_as_map::named(pairs),
        });
    }
}

impl From<TelemetryPayload> for LastTelemetry {
    fn from(payload: TelemetryPayload) -> Self {
        Self {
            ts: payload.ts,
            seq: payload.seq,
            metrics: metrics_as_map::named(
                (payload.metrics.into_iter()).map(|(name, value)| (name.as_str().into(), value)),
            ),
        }
    }
}

mod metrics_as_map {
    use std::collections::BTreeMap;

    use fleetwatch_models::names::Named;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(
        metrics: &Named<f64>,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_map(metrics.iter())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Named<f64>, D::Error> {
        let map = BTreeMap::<String, f64>::deserialize(deserializer)?;
        Ok(named(
            (map.into_iter()).map(|(name, value)| (name.into_boxed_str(), value)),
        ))
    }

    /// The pairs of a map, in its order: its keys are sorted and unique, as `Named` needs.
    pub fn named(pairs: impl Iterator<Item = (Box<str>, f64)>) -> Named<f64> {
        Named::from_sorted(pairs.collect()).expect("a map's keys are sorted and unique")
    }
}

/// A message for the device.
#[derive(Clone, Debug, PartialEq)]
pub enum Downlink {
    Command(CommandPayload),
    Desired(DesiredPayload),
}

/// What a change requires (write the twin to the changelog, publish to the device) and
/// what happened, for metrics and logs.
#[derive(Debug, Default, PartialEq)]
pub struct Effects {
    pub persist: bool,
    pub downlink: Vec<Downlink>,
    /// States commands entered.
    pub entered: Vec<CommandState>,
    pub connectivity: Option<ConnectivityChange>,
    /// Alarm lifecycle events for `iot.alarms`, written before the twin.
    pub alarm_events: Vec<fleetwatch_protocol::AlarmEvent>,
    /// A user's verdict for the trainer.
    pub feedback: Option<fleetwatch_protocol::Feedback>,
}

impl Effects {
    pub(super) fn persist() -> Self {
        Self {
            persist: true,
            ..Self::default()
        }
    }

    fn merge(&mut self, other: Effects) {
        self.persist |= other.persist;
        self.downlink.extend(other.downlink);
        self.entered.extend(other.entered);
        self.connectivity = other.connectivity.or(self.connectivity.take());
        self.alarm_events.extend(other.alarm_events);
        self.feedback = other.feedback.or(self.feedback.take());
    }

    fn send(&mut self, command: &mut CommandRecord, at_ms: i64, rules: &TwinRules) {
        let was = command.state;
        self.downlink.push(send(command, at_ms, rules));
        if command.state != was {
            self.entered.push(command.state);
        }
        self.persist = true;
    }
}

/// Why a desired-state write or a command was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TwinError {
    #[error("desired state is at version {current}, not {expected}; read it again and retry")]
    VersionMismatch { expected: u64, current: u64 },
    #[error(
        "idempotency key {key:?} was already used for command {command_id} with other content"
    )]
    KeyReused { key: String, command_id: String },
    #[error("{pending} commands are already waiting for this device (the limit); retry when some have finished")]
    TooManyPending { pending: usize },
}

/// The result of submitting a command: the record, and whether it is new.
#[derive(Debug)]
pub struct Submitted {
    pub command: CommandRecord,
    pub created: bool,
    pub effects: Effects,
}

impl Twin {
    pub fn new(device_id: DeviceId) -> Self {
        Self {
            device_id,
            version: 0,
            reported: JsonObject::new(),
            reported_ms: None,
            connectivity: None,
            connectivity_history: ConnectivityHistory::default(),
            last_seen_ms: None,
            telemetry: None,
            sequence: SequenceTracker::default(),
            applied: None,
            events: 0,
            duplicates: 0,
            tenant: None,
            listed: false,
            extras: None,
        }
    }

    /// Increases with every desired-state write; `If-Match` compares against it.
    pub fn desired_version(&self) -> u64 {
        self.extras
            .as_ref()
            .map_or(0, |extras| extras.desired_version)
    }

    pub fn desired(&self) -> &JsonObject {
        static NONE: std::sync::OnceLock<JsonObject> = std::sync::OnceLock::new();
        match &self.extras {
            Some(extras) => &extras.desired,
            None => NONE.get_or_init(JsonObject::new),
        }
    }

    /// Service clock (ms) of the last desired-state change.
    pub fn desired_ms(&self) -> Option<i64> {
        self.extras.as_ref().and_then(|extras| extras.desired_ms)
    }

    /// Pending commands and the most recent finished ones, oldest first.
    pub fn commands(&self) -> &[CommandRecord] {
        self.extras.as_ref().map_or(&[], |extras| &extras.commands)
    }

    /// Active alarms and the most recent cleared ones (`alarms.rs`).
    pub fn alarms(&self) -> &[Alarm] {
        self.extras.as_ref().map_or(&[], |extras| &extras.alarms)
    }

    /// The commands, to change in place (none: nothing is allocated for them).
    pub(super) fn commands_mut(&mut self) -> &mut [CommandRecord] {
        match &mut self.extras {
            Some(extras) => &mut extras.commands,
            None => &mut [],
        }
    }

    /// The parts most devices never have, allocated when first written.
    pub fn extras_mut(&mut self) -> &mut TwinExtras {
        self.extras.get_or_insert_with(Box::default)
    }

    /// Take the parts most devices never have, leaving them empty.
    pub fn take_extras(&mut self) -> TwinExtras {
        self.extras.take().map(|extras| *extras).unwrap_or_default()
    }

    /// Move the device to `tenant` (`None`: to no tenant). The directory is updated by
    /// the write this asks for.
    pub fn set_tenant(&mut self, tenant: Option<TenantId>) -> Effects {
        self.tenant = tenant;
        self.listed = false;
        self.version += 1;
        Effects::persist()
    }

    /// Desired keys whose value differs from the reported one.
    pub fn delta(&self) -> JsonObject {
        self.desired()
            .iter()
            .filter(|(key, value)| self.reported.get(*key) != Some(value))
            .map(|(key, value)| (key.clone(), value.clone()))
            .collect()
    }

    pub fn is_online(&self) -> bool {
        self.connectivity == Some(Connectivity::Online)
    }

    pub fn pending_commands(&self) -> usize {
        self.commands()
            .iter()
            .filter(|c| !c.state.is_terminal())
            .count()
    }

    pub fn command(&self, command_id: &str) -> Option<&CommandRecord> {
        self.commands().iter().find(|c| c.command_id == command_id)
    }

    /// Whether the event read at `source` is in this twin already (counted as a
    /// duplicate); if not, it is remembered as the newest applied. Offsets compare only
    /// within one partition.
    pub fn already_applied(&mut self, source: SourcePosition) -> bool {
        if let Some(newest) = self.applied {
            if newest.partition == source.partition && source.offset <= newest.offset {
                self.duplicates += 1;
                return true;
            }
        }
        self.applied = Some(source);
        false
    }

    /// Apply what the device said. `None` for a duplicate telemetry message.
    /// Borrowed: a reading, by far the most common event, is copied into the twin's last
    /// telemetry in place, and the caller keeps the event for a second attempt.
    pub fn apply_event(
        &mut self,
        body: &DeviceEventBody,
        at_ms: i64,
        rules: &TwinRules,
    ) -> Option<Effects> {
        let mut effects = Effects::default();
        match body {
            DeviceEventBody::Telemetry(telemetry) => {
                if !self.sequence.accept(telemetry.seq) {
                    self.duplicates += 1;
                    return None;
                }
                LastTelemetry::keep(&mut self.telemetry, telemetry);
                effects.merge(self.heard_from(at_ms, rules));
            }
            DeviceEventBody::State(state) => {
                merge_patch(&mut self.reported, state.reported.clone());
                self.reported_ms = Some(at_ms);
                effects.persist = true;
                effects.merge(self.heard_from(at_ms, rules));
            }
            DeviceEventBody::Status(status) => {
                effects.merge(self.set_connectivity(
                    status.status,
                    at_ms,
                    ConnectivityCause::StatusMessage,
                    rules,
                ));
            }
            DeviceEventBody::Ack(ack) => effects.merge(self.apply_ack(ack, at_ms)),
            // The devices role removes the twin itself; nothing to apply to it.
            DeviceEventBody::Decommissioned => return Some(Effects::default()),
        }
        self.events += 1;
        self.last_seen_ms = Some(at_ms);
        if effects.persist {
            self.forget_old_commands(rules.kept_finished_commands);
            self.version += 1;
        }
        Some(effects)
    }

    /// Sending is being online, whatever the last status message said.
    fn heard_from(&mut self, at_ms: i64, rules: &TwinRules) -> Effects {
        if self.is_online() {
            return Effects::default();
        }
        self.set_connectivity(
            Connectivity::Online,
            at_ms,
            ConnectivityCause::Activity,
            rules,
        )
    }

    fn set_connectivity(
        &mut self,
        to: Connectivity,
        at_ms: i64,
        cause: ConnectivityCause,
        rules: &TwinRules,
    ) -> Effects {
        if self.connectivity == Some(to) {
            return Effects::default();
        }
        self.connectivity = Some(to);
        let change = ConnectivityChange { to, at_ms, cause };
        self.connectivity_history.push(change.clone());
        let mut effects = if to == Connectivity::Online {
            self.on_reconnect(at_ms, rules)
        } else {
            Effects::persist()
        };
        effects.connectivity = Some(change);
        effects
    }

    /// A device that (re)appears gets its delta and every command not yet acknowledged.
    fn on_reconnect(&mut self, at_ms: i64, rules: &TwinRules) -> Effects {
        let mut effects = Effects::persist();
        let delta = self.delta();
        if !delta.is_empty() {
            effects.downlink.push(Downlink::Desired(DesiredPayload {
                version: self.desired_version(),
                delta,
                ts: at_ms,
            }));
        }
        for command in self
            .commands_mut()
            .iter_mut()
            .filter(|c| matches!(c.state, CommandState::Queued | CommandState::Sent))
            .filter(|c| c.expires_ms > at_ms)
        {
            effects.send(command, at_ms, rules);
        }
        effects
    }

    fn apply_ack(&mut self, ack: &AckPayload, at_ms: i64) -> Effects {
        let Some(command) = self
            .commands_mut()
            .iter_mut()
            .find(|c| c.command_id == ack.command_id)
        else {
            tracing::debug!(device = %self.device_id, command = %ack.command_id, "ack for an unknown command");
            return Effects::default();
        };
        let to = match ack.outcome {
            AckOutcome::Received => CommandState::Acked,
            AckOutcome::Succeeded => CommandState::Succeeded,
            AckOutcome::Failed => CommandState::Failed,
        };
        // Late or repeated acknowledgements never move a command backwards.
        let rank = |state: CommandState| match state {
            CommandState::Queued => 0,
            CommandState::Sent => 1,
            CommandState::Acked => 2,
            _ => 3,
        };
        if command.state.is_terminal() || rank(to) <= rank(command.state) {
            return Effects::default();
        }
        step(command, to, at_ms, ack.message.clone());
        command.next_attempt_ms = None;
        let mut effects = Effects::persist();
        effects.entered.push(to);
        effects
    }

    /// Replace or merge the desired state, if `if_match` (when given) is the current
    /// desired version.
    pub fn set_desired(
        &mut self,
        desired: JsonObject,
        merge: bool,
        if_match: Option<u64>,
        at_ms: i64,
    ) -> Result<Effects, TwinError> {
        if let Some(expected) = if_match {
            if expected != self.desired_version() {
                return Err(TwinError::VersionMismatch {
                    expected,
                    current: self.desired_version(),
                });
            }
        }
        let extras = self.extras_mut();
        if merge {
            merge_patch(&mut extras.desired, desired);
        } else {
            extras.desired = desired.into_iter().filter(|(_, v)| !v.is_null()).collect();
        }
        extras.desired_version += 1;
        extras.desired_ms = Some(at_ms);
        self.version += 1;
        let mut effects = Effects::persist();
        let delta = self.delta();
        if self.is_online() && !delta.is_empty() {
            effects.downlink.push(Downlink::Desired(DesiredPayload {
                version: self.desired_version(),
                delta,
                ts: at_ms,
            }));
        }
        Ok(effects)
    }

    /// Journal a new command (or return the existing one for the same id or idempotency
    /// key) and send it at once if the device is online.
    pub fn submit(
        &mut self,
        new: NewCommand,
        at_ms: i64,
        rules: &TwinRules,
    ) -> Result<Submitted, TwinError> {
        let existing = self.commands().iter().find(|c| {
            c.command_id == new.command_id
                || (new.idempotency_key.is_some() && c.idempotency_key == new.idempotency_key)
        });
        if let Some(existing) = existing {
            if existing.command_id != new.command_id
                && (existing.name != new.name || existing.args != new.args)
            {
                return Err(TwinError::KeyReused {
                    key: new.idempotency_key.unwrap_or_default(),
                    command_id: existing.command_id.clone(),
                });
            }
            return Ok(Submitted {
                command: existing.clone(),
                created: false,
                effects: Effects::default(),
            });
        }
        let pending = self.pending_commands();
        if pending >= rules.max_pending_commands {
            return Err(TwinError::TooManyPending { pending });
        }
        let mut command = CommandRecord {
            command_id: new.command_id,
            name: new.name,
            args: new.args,
            idempotency_key: new.idempotency_key,
            state: CommandState::Queued,
            created_ms: at_ms,
            expires_ms: at_ms.saturating_add(new.ttl_ms.min(i64::MAX as u64) as i64),
            attempts: 0,
            next_attempt_ms: None,
            history: vec![CommandStep {
                state: CommandState::Queued,
                at_ms,
                detail: None,
            }],
        };
        let mut effects = Effects::persist();
        effects.entered.push(CommandState::Queued);
        if self.is_online() {
            effects.send(&mut command, at_ms, rules);
        }
        self.extras_mut().commands.push(command.clone());
        self.forget_old_commands(rules.kept_finished_commands);
        self.version += 1;
        Ok(Submitted {
            command,
            created: true,
            effects,
        })
    }

    /// Time-driven rules: expire commands, resend unacknowledged ones, notice silence.
    pub fn on_timer(&mut self, now_ms: i64, rules: &TwinRules) -> Effects {
        let mut effects = Effects::default();
        let online = self.is_online();
        for command in (self.commands_mut().iter_mut()).filter(|c| !c.state.is_terminal()) {
            if command.expires_ms <= now_ms {
                let detail = format!("no outcome after {} attempt(s)", command.attempts);
                step(command, CommandState::Expired, now_ms, Some(detail));
                command.next_attempt_ms = None;
                effects.persist = true;
                effects.entered.push(CommandState::Expired);
            } else if online
                && command.state == CommandState::Sent
                && command.next_attempt_ms.is_some_and(|at| at <= now_ms)
            {
                effects.send(command, now_ms, rules);
            }
        }
        if online
            && self
                .last_seen_ms
                .is_some_and(|seen| now_ms - seen >= rules.offline_after_ms as i64)
        {
            effects.merge(self.set_connectivity(
                Connectivity::Offline,
                now_ms,
                ConnectivityCause::Silence,
                rules,
            ));
        }
        if effects.persist {
            self.forget_old_commands(rules.kept_finished_commands);
            self.version += 1;
        }
        effects
    }

    /// When [`Twin::on_timer`] next has something to do.
    pub fn next_deadline(&self, rules: &TwinRules) -> Option<i64> {
        let online = self.is_online();
        let commands = self
            .commands()
            .iter()
            .filter(|c| !c.state.is_terminal())
            .flat_map(|c| {
                let resend = c.next_attempt_ms.filter(|_| online);
                [Some(c.expires_ms), resend]
            })
            .flatten();
        let silence = self
            .last_seen_ms
            .filter(|_| online)
            .map(|seen| seen + rules.offline_after_ms as i64);
        commands.chain(silence).min()
    }

    fn forget_old_commands(&mut self, keep_finished: usize) {
        let finished = self.commands().len() - self.pending_commands();
        let mut excess = finished.saturating_sub(keep_finished);
        if excess == 0 {
            return;
        }
        self.extras_mut().commands.retain(|c| {
            if excess > 0 && c.state.is_terminal() {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }
}

/// Publish (or republish) a command: the next attempt waits twice as long as the last.
fn send(command: &mut CommandRecord, at_ms: i64, rules: &TwinRules) -> Downlink {
    command.attempts += 1;
    let backoff = rules
        .resend_after_ms
        .saturating_mul(1 << (command.attempts - 1).min(16))
        .min(rules.max_resend_after_ms);
    command.next_attempt_ms = Some(at_ms + backoff as i64);
    if command.state == CommandState::Queued {
        step(command, CommandState::Sent, at_ms, None);
    } else if let Some(last) = command.history.last_mut() {
        last.detail = Some(format!("attempt {}", command.attempts));
    }
    Downlink::Command(CommandPayload {
        command_id: command.command_id.clone(),
        name: command.name.clone(),
        args: command.args.clone(),
        ts: at_ms,
    })
}

fn step(command: &mut CommandRecord, to: CommandState, at_ms: i64, detail: Option<String>) {
    command.state = to;
    command.history.push(CommandStep {
        state: to,
        at_ms,
        detail,
    });
}

/// JSON merge patch (RFC 7386) at the top level: null deletes a key, anything else sets it.
fn merge_patch(target: &mut JsonObject, patch: JsonObject) {
    for (key, value) in patch {
        if value.is_null() {
            target.remove(&key);
        } else {
            target.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use fleetwatch_protocol::{StatePayload, StatusPayload};
    use serde_json::json;

    use super::*;

    fn rules() -> TwinRules {
        TwinRules {
            offline_after_ms: 10_000,
            resend_after_ms: 1_000,
            max_resend_after_ms: 4_000,
            max_pending_commands: 2,
            kept_finished_commands: 1,
        }
    }

    fn object(value: serde_json::Value) -> JsonObject {
        value.as_object().unwrap().clone()
    }

    fn reading(seq: u64, metrics: &[(&str, f64)]) -> DeviceEventBody {
        DeviceEventBody::Telemetry(TelemetryPayload {
            ts: 1_000 + seq as i64,
            seq,
            metrics: metrics.iter().map(|(n, v)| ((*n).into(), *v)).collect(),
        })
    }

    #[test]
    fn the_last_reading_replaces_the_one_before_whatever_its_names() {
        let mut twin = twin();
        let last = |twin: &Twin| {
            let kept = twin.telemetry.as_ref().unwrap();
            let metrics = kept.metrics.iter();
            let pairs: Vec<(String, f64)> = metrics.map(|(n, v)| (n.to_owned(), *v)).collect();
            (kept.seq, kept.ts, pairs)
        };
        twin.apply_event(&reading(1, &[("a", 1.0), ("b", 2.0)]), 0, &rules());
        // The same names: overwritten in place.
        twin.apply_event(&reading(2, &[("a", 3.0), ("b", 4.0)]), 1, &rules());
        assert_eq!(
            last(&twin),
            (2, 1_002, vec![("a".into(), 3.0), ("b".into(), 4.0)])
        );
        // Other names, fewer or more of them: rebuilt.
        twin.apply_event(&reading(3, &[("a", 5.0), ("c", 6.0)]), 2, &rules());
        assert_eq!(
            last(&twin),
            (3, 1_003, vec![("a".into(), 5.0), ("c".into(), 6.0)])
        );
        twin.apply_event(&reading(4, &[("a", 7.0)]), 3, &rules());
        assert_eq!(last(&twin), (4, 1_004, vec![("a".into(), 7.0)]));
        twin.apply_event(&reading(5, &[("a", 8.0), ("z", 9.0)]), 4, &rules());
        assert_eq!(
            last(&twin),
            (5, 1_005, vec![("a".into(), 8.0), ("z".into(), 9.0)])
        );
    }

    fn status(to: Connectivity) -> DeviceEventBody {
        DeviceEventBody::Status(StatusPayload {
            status: to,
            ts: None,
        })
    }

    fn ack(command_id: &str, outcome: AckOutcome) -> DeviceEventBody {
        DeviceEventBody::Ack(AckPayload {
            command_id: command_id.into(),
            outcome,
            message: None,
            ts: None,
        })
    }

    fn command(id: &str, key: Option<&str>) -> NewCommand {
        NewCommand {
            command_id: id.into(),
            name: "reboot".into(),
            args: json!({}),
            idempotency_key: key.map(Into::into),
            ttl_ms: 60_000,
        }
    }

    fn twin() -> Twin {
        Twin::new(DeviceId::parse("d1").unwrap())
    }

    #[test]
    fn delta_is_what_desired_has_and_reported_lacks() {
        let mut twin = twin();
        let effects = twin
            .set_desired(object(json!({"fan": "on", "rate": 5})), false, None, 1)
            .unwrap();
        assert!(effects.persist);
        assert!(effects.downlink.is_empty(), "offline: nothing published");
        twin.apply_event(
            &DeviceEventBody::State(StatePayload {
                ts: None,
                reported: object(json!({"fan": "on", "rate": 1})),
            }),
            2,
            &rules(),
        );
        assert_eq!(twin.delta(), object(json!({"rate": 5})));
    }

    #[test]
    fn a_stale_version_is_refused() {
        let mut twin = twin();
        twin.set_desired(object(json!({"a": 1})), false, Some(0), 1)
            .unwrap();
        assert_eq!(twin.desired_version(), 1);
        let error = twin
            .set_desired(object(json!({"a": 2})), false, Some(0), 2)
            .unwrap_err();
        assert_eq!(
            error,
            TwinError::VersionMismatch {
                expected: 0,
                current: 1
            }
        );
        assert_eq!(twin.desired(), &object(json!({"a": 1})));
        twin.set_desired(object(json!({"b": 2, "a": null})), true, Some(1), 3)
            .unwrap();
        assert_eq!(twin.desired(), &object(json!({"b": 2})));
    }

    #[test]
    fn a_command_for_an_offline_device_waits_for_it() {
        let rules = rules();
        let mut twin = twin();
        let submitted = twin.submit(command("c1", None), 0, &rules).unwrap();
        assert!(submitted.created);
        assert_eq!(submitted.command.state, CommandState::Queued);
        assert!(submitted.effects.downlink.is_empty());
        twin.set_desired(object(json!({"fan": "on"})), false, None, 1)
            .unwrap();

        let effects = twin
            .apply_event(&status(Connectivity::Online), 5, &rules)
            .unwrap();
        assert_eq!(effects.downlink.len(), 2, "{effects:?}");
        assert!(
            matches!(&effects.downlink[0], Downlink::Desired(d) if d.delta.contains_key("fan"))
        );
        assert!(matches!(&effects.downlink[1], Downlink::Command(c) if c.command_id == "c1"));
        assert_eq!(twin.command("c1").unwrap().state, CommandState::Sent);
    }

    #[test]
    fn unacknowledged_commands_are_resent_with_backoff_then_expire() {
        let rules = rules();
        let mut twin = twin();
        twin.apply_event(&status(Connectivity::Online), 0, &rules);
        twin.submit(command("c1", None), 0, &rules).unwrap();
        let mut resent_at = Vec::new();
        let mut now = 0;
        while let Some(deadline) = twin.next_deadline(&rules) {
            now = deadline;
            // Keep the device looking alive so silence does not interfere.
            twin.last_seen_ms = Some(now);
            let effects = twin.on_timer(now, &rules);
            if !effects.downlink.is_empty() {
                resent_at.push(now);
            }
            if twin.command("c1").unwrap().state.is_terminal() {
                break;
            }
        }
        assert_eq!(&resent_at[..5], &[1_000, 3_000, 7_000, 11_000, 15_000]);
        let command = twin.command("c1").unwrap();
        assert_eq!(command.state, CommandState::Expired);
        assert_eq!(now, 60_000);
    }

    #[test]
    fn acks_move_forward_only() {
        let rules = rules();
        let mut twin = twin();
        twin.apply_event(&status(Connectivity::Online), 0, &rules);
        twin.submit(command("c1", None), 0, &rules).unwrap();
        twin.apply_event(&ack("c1", AckOutcome::Succeeded), 1, &rules);
        let effects = twin
            .apply_event(&ack("c1", AckOutcome::Received), 2, &rules)
            .unwrap();
        assert!(!effects.persist);
        let states: Vec<_> = twin
            .command("c1")
            .unwrap()
            .history
            .iter()
            .map(|s| s.state)
            .collect();
        assert_eq!(
            states,
            [
                CommandState::Queued,
                CommandState::Sent,
                CommandState::Succeeded
            ]
        );
    }

    #[test]
    fn idempotency_keys_return_the_same_command() {
        let rules = rules();
        let mut twin = twin();
        let first = twin.submit(command("c1", Some("k")), 0, &rules).unwrap();
        let again = twin.submit(command("c2", Some("k")), 1, &rules).unwrap();
        assert!(!again.created);
        assert_eq!(again.command.command_id, first.command.command_id);
        let mut other = command("c3", Some("k"));
        other.name = "shutdown".into();
        assert!(matches!(
            twin.submit(other, 2, &rules),
            Err(TwinError::KeyReused { .. })
        ));
        twin.submit(command("c4", None), 3, &rules).unwrap();
        assert!(matches!(
            twin.submit(command("c5", None), 4, &rules),
            Err(TwinError::TooManyPending { pending: 2 })
        ));
    }

    #[test]
    fn silence_marks_the_device_offline_with_the_cause() {
        let rules = rules();
        let mut twin = twin();
        twin.apply_event(&status(Connectivity::Online), 0, &rules);
        assert_eq!(twin.next_deadline(&rules), Some(10_000));
        let effects = twin.on_timer(10_000, &rules);
        assert!(effects.persist);
        assert_eq!(twin.connectivity, Some(Connectivity::Offline));
        assert_eq!(
            twin.connectivity_history.last().unwrap().cause,
            ConnectivityCause::Silence
        );
        assert_eq!(twin.next_deadline(&rules), None);
    }

    #[test]
    fn finished_commands_beyond_the_limit_are_forgotten() {
        let rules = rules();
        let mut twin = twin();
        twin.apply_event(&status(Connectivity::Online), 0, &rules);
        for id in ["c1", "c2", "c3"] {
            twin.submit(command(id, None), 0, &rules).unwrap();
            twin.apply_event(&ack(id, AckOutcome::Failed), 1, &rules);
        }
        let ids: Vec<_> = twin
            .commands()
            .iter()
            .map(|c| c.command_id.as_str())
            .collect();
        assert_eq!(ids, ["c3"]);
    }

    #[test]
    fn the_changelog_record_round_trips() {
        let rules = rules();
        let mut twin = twin();
        twin.apply_event(&status(Connectivity::Online), 0, &rules);
        twin.submit(command("c1", Some("k")), 0, &rules).unwrap();
        twin.set_desired(object(json!({"fan": "on"})), false, None, 1)
            .unwrap();
        let json = serde_json::to_vec(&twin).unwrap();
        assert_eq!(serde_json::from_slice::<Twin>(&json).unwrap(), twin);
    }
}
