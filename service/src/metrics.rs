//! The service's Prometheus metrics. Names are fixed (dashboards and alerts depend on
//! them); all live in one [`Metrics`] value per process, passed to the components, so
//! tests can assert on them and several instances can share a process.

use prometheus::{
    Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
};

pub struct Metrics {
    pub registry: Registry,
    /// Ingested MQTT messages by outcome: forwarded, dead_lettered, ignored.
    pub ingest_messages: IntCounterVec,
    /// MQTT messages received but not yet confirmed by Kafka.
    pub ingest_inflight: IntGauge,
    /// MQTT (re)connections of the ingest client.
    pub ingest_connections: IntCounter,
    /// 1 while ingest is connected and subscribed, else 0.
    pub ingest_subscribed: IntGauge,
    /// 1 while this process can reach Kafka (a metadata request answered).
    pub kafka_reachable: IntGauge,
    /// Producers still looking up their topics and getting their producer id
    /// (`Producer::prepare`); the process is not ready before they are done.
    pub kafka_producers_preparing: IntGauge,
    /// Seconds since the epoch when the async runtime last ran the heartbeat task.
    pub runtime_heartbeat: IntGauge,
    /// Dead letters by reason class (json, topic, device_id, size, ...).
    pub dead_letters: IntCounterVec,
    /// Times the Kafka producer queue was full and a send was retried.
    pub kafka_queue_full: IntCounter,
    /// Records handled by each role's consumer.
    pub consumed: IntCounterVec,
    /// Records a role skipped, by role and reason (duplicate, undecodable, ...).
    pub skipped: IntCounterVec,
    /// Partitions currently assigned, by role.
    pub assigned_partitions: IntGaugeVec,
    /// Device partitions owned whose twins were not read back from the changelog yet;
    /// the devices role is not ready while any is (their commands would wait).
    pub device_partitions_unrestored: IntGauge,
    /// Records handled by the devices role whose twin writes have not landed yet.
    pub twin_writes_pending: IntGauge,
    /// Live device actors.
    pub device_actors: IntGauge,
    /// Devices whose twin says online, among the live actors of this instance (an online
    /// device is never passivated, so this is every online device it owns).
    pub devices_online: IntGauge,
    /// Device actors stopped for being idle (their twin stays in the changelog).
    pub device_passivations: IntCounter,
    /// Twin records written to `iot.device-state`.
    pub twin_writes: IntCounter,
    /// Of those, the ones written through the urgent lane (`devices::Lane`).
    pub twin_urgent_writes: IntCounter,
    /// Writes that asked for the urgent lane but followed the device's write still
    /// lingering in the bulk lane (which was then sent at once).
    pub twin_urgent_writes_held: IntCounter,
    /// Twin records that failed to reach the changelog (timer-driven writes only;
    /// event-driven ones stop the partition until they succeed).
    pub twin_write_failures: IntCounter,
    /// Passivated twins read back from the changelog.
    pub twin_revivals: IntCounter,
    /// Device connectivity changes, by new state (online, offline) and cause.
    pub connectivity_changes: IntCounterVec,
    /// Command state transitions, by the state entered.
    pub command_transitions: IntCounterVec,
    /// Requests for device actors handled by the owner, by kind and status.
    pub device_requests: IntCounterVec,
    /// REST requests that got no reply from the owning instance in time.
    pub request_timeouts: IntCounter,
    /// 1 while the downlink MQTT client is connected.
    pub downlink_connected: IntGauge,
    /// Messages handed to the downlink MQTT client (commands, desired deltas).
    pub downlink_published: IntCounter,
    /// Messages refused because the downlink queue was full.
    pub downlink_dropped: IntCounter,
    /// Parameter snapshots published by the trainer.
    pub params_published: IntCounter,
    /// Parameter snapshots the scorer received.
    pub params_received: IntCounter,
    /// Events scored.
    pub events_scored: IntCounter,
    /// Alerts emitted, by state (raised, cleared).
    pub alerts_emitted: IntCounterVec,
    /// Connected WebSocket clients.
    pub ws_clients: IntGauge,
    /// Alerts sent to WebSocket clients.
    pub ws_alerts_sent: IntCounter,
    /// Alerts a slow WebSocket client missed because its queue was full.
    pub ws_alerts_dropped: IntCounter,
    /// Bad frames received from WebSocket clients.
    pub ws_bad_frames: IntCounter,
    /// Calls refused for their credentials, by reason (missing, malformed, expired,
    /// bad_signature, wrong_audience, ...; `scope` for a valid token lacking a scope).
    pub auth_failures: IntCounterVec,
    /// Devices in this instance's copy of `iot.device-directory`.
    pub directory_devices: IntGauge,
    /// Devices decommissioned (counted by the twin owner).
    pub devices_decommissioned: IntCounter,
    /// Records of a partition not yet handled by a role's consumer (high watermark minus
    /// the consumer's position), by role, topic and partition; refreshed every few seconds.
    pub consumer_lag: IntGaugeVec,
    /// Messages sent to actors and not yet answered (queued in a mailbox or being
    /// handled), by kind of actor.
    pub mailbox_depth: IntGaugeVec,
    /// Kafka records whose delivery failed for good.
    pub kafka_produce_errors: IntCounter,
    /// Time from queueing a Kafka record to its confirmation (acks=all).
    pub kafka_produce_seconds: Histogram,
    /// A reading's device timestamp to its twin holding it (device and service clocks
    /// alike: on one machine, the pipeline's delay; across machines, also clock skew).
    pub twin_update_delay_seconds: Histogram,
    /// Score records the scorer published to `iot.scores`.
    pub scores_published: IntCounter,
    /// 1 while the time-series store accepted the storage role's last write, 0 after a
    /// failed one (the role then holds its consumption).
    pub storage_up: IntGauge,
    /// Points the time-series store confirmed, by measurement.
    pub storage_points: IntCounterVec,
    /// Writes to the time-series store that failed (each retried).
    pub storage_write_errors: IntCounter,
    /// Time of each confirmed write to the time-series store.
    pub storage_write_seconds: Histogram,
    /// Points waiting in the storage role's batch.
    pub storage_buffered: IntGauge,
    /// 1 when the archive role runs with an `archive.url`, 0 when it is idle.
    pub archive_enabled: IntGauge,
    /// 1 while the archive's store took the last upload, 0 after a failed one.
    pub archive_up: IntGauge,
    /// Archive files uploaded (each confirmed by the store).
    pub archive_files: IntCounter,
    /// Rows in the uploaded archive files.
    pub archive_rows: IntCounter,
    /// Bytes of the uploaded archive files (Parquet, compressed).
    pub archive_bytes: IntCounter,
    /// Failed archive uploads (each retried).
    pub archive_upload_errors: IntCounter,
    /// Time of each confirmed archive upload.
    pub archive_upload_seconds: Histogram,
    /// Bytes of rows in the archive's open files.
    pub archive_buffered_bytes: IntGauge,
    /// Webhook delivery outcomes: delivered, retrying (an attempt failed), given_up.
    pub webhook_deliveries: IntCounterVec,
    /// Deliveries waiting in the webhooks role's outbox.
    pub webhook_outbox: IntGauge,
    /// Times an alarm event waited because the webhook outbox was full.
    pub webhook_outbox_full: IntCounter,
    /// Time of each webhook request, answered or not.
    pub webhook_request_seconds: Histogram,
    /// Job executions that moved to a state, by state, as the job owners recorded them.
    pub job_executions: IntCounterVec,
    /// Job commands handed to devices' command paths (resends included: transport).
    pub job_commands_sent: IntCounter,
    /// Jobs that ended, by status (completed, aborted, cancelled), as their owners
    /// recorded it.
    pub jobs_finished: IntCounterVec,
    /// Running jobs this instance owns.
    pub jobs_running: IntGauge,
    /// Job events pushed to WebSocket clients' channels.
    pub ws_job_events: IntCounter,
    /// Schedule occurrences recorded, by outcome (fired, missed, expired,
    /// nonexistent_local_time).
    pub schedule_occurrences: IntCounterVec,
    /// Schedule commands: `sent` to the device's command path (a new owner's resend
    /// included: transport), `other_tenant` (not sent: the device left the tenant).
    pub schedule_commands: IntCounterVec,
    /// Live schedules this instance owns.
    pub schedules_owned: IntGauge,
    /// Alarm rules' decisions recorded, by outcome (performed, dry_run, limited,
    /// other_tenant).
    pub rule_actions: IntCounterVec,
    /// Rule actions taken, by kind (command, job, notify) and result (`taken`); a
    /// notification's deliveries are the webhooks role's. A new owner's retake is counted
    /// again (transport).
    pub rule_sends: IntCounterVec,
    /// Active alarms of the devices this instance decides for.
    pub rules_alarms_watched: IntGauge,
    /// Alerts per model id, by whether the model decides for the device (`decides`: to
    /// customers, on `iot.alerts`) or runs in shadow (`shadow`: on `iot.shadow-alerts`
    /// only), and state.
    pub model_alerts: IntCounterVec,
    /// Readings each model learned, by model id (the trainer's cost per model).
    pub trainer_model_updates: IntCounterVec,
    /// Time (µs) the trainer spent learning, by model id.
    pub trainer_model_micros: IntCounterVec,
    /// Devices whose promoted model has no parameters yet here, so their previous model
    /// still decides for them.
    pub scorer_awaiting_params: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let counter = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(counter.clone()))
                .expect("unique metric");
            counter
        };
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            let counter = IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(counter.clone()))
                .expect("unique metric");
            counter
        };
        let gauge = |name: &str, help: &str| {
            let gauge = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(gauge.clone()))
                .expect("unique metric");
            gauge
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            let gauge = IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric");
            registry
                .register(Box::new(gauge.clone()))
                .expect("unique metric");
            gauge
        };
        Self {
            ingest_messages: counter_vec(
                "fleetwatch_ingest_messages_total",
                "MQTT messages ingested, by outcome",
                &["outcome"],
            ),
            ingest_inflight: gauge(
                "fleetwatch_ingest_inflight",
                "MQTT messages awaiting Kafka confirmation",
            ),
            ingest_connections: counter(
                "fleetwatch_ingest_mqtt_connections_total",
                "MQTT connections made by ingest",
            ),
            kafka_reachable: gauge(
                "fleetwatch_kafka_reachable",
                "1 while this process can reach Kafka",
            ),
            kafka_producers_preparing: gauge(
                "fleetwatch_kafka_producers_preparing",
                "Producers still looking up their topics and getting their producer id",
            ),
            runtime_heartbeat: gauge(
                "fleetwatch_runtime_heartbeat_seconds",
                "When the async runtime last ran the heartbeat task (seconds since the epoch)",
            ),
            ingest_subscribed: gauge(
                "fleetwatch_ingest_subscribed",
                "1 while ingest is connected and subscribed",
            ),
            dead_letters: counter_vec(
                "fleetwatch_dead_letters_total",
                "Inputs sent to the dead-letter topic, by reason class",
                &["reason"],
            ),
            kafka_queue_full: counter(
                "fleetwatch_kafka_queue_full_total",
                "Sends retried because the producer queue was full",
            ),
            consumed: counter_vec(
                "fleetwatch_consumed_records_total",
                "Kafka records handled, by role",
                &["role"],
            ),
            skipped: counter_vec(
                "fleetwatch_skipped_records_total",
                "Kafka records skipped, by role and reason",
                &["role", "reason"],
            ),
            assigned_partitions: gauge_vec(
                "fleetwatch_assigned_partitions",
                "Partitions assigned, by role",
                &["role"],
            ),
            device_partitions_unrestored: gauge(
                "fleetwatch_device_partitions_unrestored",
                "Device partitions owned whose twins are not read back yet",
            ),
            twin_writes_pending: gauge(
                "fleetwatch_twin_writes_pending",
                "Records handled by the devices role whose twin writes have not landed",
            ),
            device_actors: gauge("fleetwatch_device_actors", "Live device actors"),
            devices_online: gauge(
                "fleetwatch_devices_online",
                "Devices online among those this instance owns",
            ),
            device_passivations: counter(
                "fleetwatch_device_passivations_total",
                "Device actors stopped for being idle",
            ),
            twin_writes: counter(
                "fleetwatch_twin_writes_total",
                "Twin records written to the changelog",
            ),
            twin_urgent_writes: counter(
                "fleetwatch_twin_urgent_writes_total",
                "Twin records written through the urgent lane (a command a person waits on)",
            ),
            twin_urgent_writes_held: counter(
                "fleetwatch_twin_urgent_writes_held_total",
                "Twin records that asked for the urgent lane but followed the device's lingering write",
            ),
            twin_write_failures: counter(
                "fleetwatch_twin_write_failures_total",
                "Timer-driven twin records that failed to reach the changelog",
            ),
            twin_revivals: counter(
                "fleetwatch_twin_revivals_total",
                "Passivated twins read back from the changelog",
            ),
            connectivity_changes: counter_vec(
                "fleetwatch_device_connectivity_changes_total",
                "Device connectivity changes, by new state and cause",
                &["to", "cause"],
            ),
            command_transitions: counter_vec(
                "fleetwatch_command_transitions_total",
                "Command state transitions, by state entered",
                &["state"],
            ),
            device_requests: counter_vec(
                "fleetwatch_device_requests_total",
                "Requests for device actors handled, by kind and status",
                &["kind", "status"],
            ),
            request_timeouts: counter(
                "fleetwatch_request_timeouts_total",
                "REST requests the owning instance did not answer in time",
            ),
            downlink_connected: gauge(
                "fleetwatch_downlink_connected",
                "1 while the downlink MQTT client is connected",
            ),
            downlink_published: counter(
                "fleetwatch_downlink_published_total",
                "Messages handed to the downlink MQTT client",
            ),
            downlink_dropped: counter(
                "fleetwatch_downlink_dropped_total",
                "Downlink messages refused because the client queue was full",
            ),
            params_published: counter(
                "fleetwatch_params_published_total",
                "Model parameter snapshots published",
            ),
            params_received: counter(
                "fleetwatch_params_received_total",
                "Model parameter snapshots received by the scorer",
            ),
            events_scored: counter("fleetwatch_events_scored_total", "Telemetry events scored"),
            alerts_emitted: counter_vec(
                "fleetwatch_alerts_total",
                "Alerts emitted, by state",
                &["state"],
            ),
            ws_clients: gauge("fleetwatch_ws_clients", "Connected WebSocket clients"),
            ws_alerts_sent: counter(
                "fleetwatch_ws_alerts_sent_total",
                "Alerts sent to WebSocket clients",
            ),
            ws_alerts_dropped: counter(
                "fleetwatch_ws_alerts_dropped_total",
                "Alerts a slow WebSocket client missed",
            ),
            ws_bad_frames: counter(
                "fleetwatch_ws_bad_frames_total",
                "Unusable frames received from WebSocket clients",
            ),
            auth_failures: counter_vec(
                "fleetwatch_auth_failures_total",
                "Calls refused for their credentials, by reason",
                &["reason"],
            ),
            directory_devices: gauge(
                "fleetwatch_directory_devices",
                "Devices in this instance's copy of the device directory",
            ),
            devices_decommissioned: counter(
                "fleetwatch_devices_decommissioned_total",
                "Devices decommissioned by their twin owner",
            ),
            consumer_lag: gauge_vec(
                "fleetwatch_consumer_lag",
                "Records not yet handled, by role, topic and partition",
                &["role", "topic", "partition"],
            ),
            mailbox_depth: gauge_vec(
                "fleetwatch_mailbox_depth",
                "Messages sent to actors and not yet answered, by actor kind",
                &["actor"],
            ),
            kafka_produce_errors: counter(
                "fleetwatch_kafka_produce_errors_total",
                "Kafka records whose delivery failed",
            ),
            kafka_produce_seconds: histogram(
                &registry,
                "fleetwatch_kafka_produce_seconds",
                "Time from queueing a Kafka record to its confirmation",
            ),
            twin_update_delay_seconds: histogram(
                &registry,
                "fleetwatch_twin_update_delay_seconds",
                "From a reading's device timestamp to its twin holding it",
            ),
            scores_published: counter(
                "fleetwatch_scores_published_total",
                "Score records published to iot.scores",
            ),
            storage_up: gauge(
                "fleetwatch_storage_up",
                "1 while the time-series store accepts writes, 0 after a failed write",
            ),
            storage_points: counter_vec(
                "fleetwatch_storage_points_total",
                "Points confirmed by the time-series store, by measurement",
                &["measurement"],
            ),
            storage_write_errors: counter(
                "fleetwatch_storage_write_errors_total",
                "Failed writes to the time-series store",
            ),
            storage_write_seconds: histogram(
                &registry,
                "fleetwatch_storage_write_seconds",
                "Time of each confirmed write to the time-series store",
            ),
            storage_buffered: gauge(
                "fleetwatch_storage_buffered_points",
                "Points waiting in the storage role's batch",
            ),
            archive_enabled: gauge(
                "fleetwatch_archive_enabled",
                "1 when the archive role runs with an archive.url, 0 when idle",
            ),
            archive_up: gauge(
                "fleetwatch_archive_up",
                "1 while the archive's store took the last upload, 0 after a failed one",
            ),
            archive_files: counter(
                "fleetwatch_archive_files_total",
                "Archive files uploaded and confirmed by the store",
            ),
            archive_rows: counter(
                "fleetwatch_archive_rows_total",
                "Rows in the uploaded archive files",
            ),
            archive_bytes: counter(
                "fleetwatch_archive_bytes_total",
                "Bytes of the uploaded archive files",
            ),
            archive_upload_errors: counter(
                "fleetwatch_archive_upload_errors_total",
                "Failed archive uploads",
            ),
            archive_upload_seconds: histogram(
                &registry,
                "fleetwatch_archive_upload_seconds",
                "Time of each confirmed archive upload",
            ),
            archive_buffered_bytes: gauge(
                "fleetwatch_archive_buffered_bytes",
                "Bytes of rows in the archive's open files",
            ),
            webhook_deliveries: counter_vec(
                "fleetwatch_webhook_deliveries_total",
                "Webhook delivery outcomes: delivered, retrying (an attempt failed), given_up",
                &["outcome"],
            ),
            webhook_outbox: gauge(
                "fleetwatch_webhook_outbox",
                "Deliveries waiting in the webhooks role's outbox",
            ),
            webhook_outbox_full: counter(
                "fleetwatch_webhook_outbox_full_total",
                "Times an alarm event waited because the webhook outbox was full",
            ),
            webhook_request_seconds: histogram(
                &registry,
                "fleetwatch_webhook_request_seconds",
                "Time of each webhook request, answered or not",
            ),
            job_executions: counter_vec(
                "fleetwatch_job_executions_total",
                "Job executions that moved to a state, by state",
                &["state"],
            ),
            job_commands_sent: counter(
                "fleetwatch_job_commands_sent_total",
                "Job commands handed to devices' command paths, resends included",
            ),
            jobs_finished: counter_vec(
                "fleetwatch_jobs_finished_total",
                "Jobs that ended, by status",
                &["status"],
            ),
            jobs_running: gauge("fleetwatch_jobs_running", "Running jobs this instance owns"),
            ws_job_events: counter(
                "fleetwatch_ws_job_events_total",
                "Job events pushed to WebSocket clients' channels",
            ),
            schedule_occurrences: counter_vec(
                "fleetwatch_schedule_occurrences_total",
                "Schedule occurrences recorded, by outcome",
                &["outcome"],
            ),
            schedule_commands: counter_vec(
                "fleetwatch_schedule_commands_total",
                "Schedule commands sent, or not sent because the device left the tenant",
                &["result"],
            ),
            schedules_owned: gauge(
                "fleetwatch_schedules_owned",
                "Live schedules this instance owns",
            ),
            rule_actions: counter_vec(
                "fleetwatch_rule_actions_total",
                "Alarm rules' decisions recorded, by outcome",
                &["outcome"],
            ),
            rule_sends: counter_vec(
                "fleetwatch_rule_sends_total",
                "Rule actions taken, by kind and result",
                &["kind", "result"],
            ),
            rules_alarms_watched: gauge(
                "fleetwatch_rules_alarms_watched",
                "Active alarms of the devices this instance decides rules for",
            ),
            model_alerts: counter_vec(
                "fleetwatch_model_alerts_total",
                "Alerts per model id, by role (decides, shadow) and state",
                &["model", "role", "state"],
            ),
            trainer_model_updates: counter_vec(
                "fleetwatch_trainer_model_updates_total",
                "Readings the trainer learned, by model id",
                &["model"],
            ),
            trainer_model_micros: counter_vec(
                "fleetwatch_trainer_model_update_micros_total",
                "Time (microseconds) the trainer spent learning, by model id",
                &["model"],
            ),
            scorer_awaiting_params: gauge(
                "fleetwatch_scorer_devices_awaiting_promoted_params",
                "Devices whose promoted model has no parameters yet, decided by their previous model",
            ),
            registry,
        }
    }

    /// The text exposition format, for `/metrics`.
    pub fn render(&self) -> String {
        let families = self.registry.gather();
        prometheus::TextEncoder::new()
            .encode_to_string(&families)
            .unwrap_or_default()
    }
}

/// A latency histogram from 1 ms to about 16 s, registered in `registry`.
fn histogram(registry: &Registry, name: &str, help: &str) -> Histogram {
    let buckets = prometheus::exponential_buckets(0.001, 2.0, 15).expect("valid buckets");
    let histogram = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets))
        .expect("valid metric");
    registry
        .register(Box::new(histogram.clone()))
        .expect("unique metric");
    histogram
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
