//! Unit tests of the devices role's handler on in-memory records: no broker needed.

use fleetwatch_protocol::{
    CommandPayload, CommandRecord, CommandState, Connectivity, DesiredPayload, DeviceEventBody,
    DeviceRequestBody, JsonObject, KafkaTopics, NewCommand, TelemetryPayload,
};
use serde_json::json;

use super::*;
use crate::kafka::memory::MemoryLog;
use crate::kafka::{PartitionListener, PartitionReader};
use crate::mqtt::Published;

/// A devices handler on an in-memory log, with an in-memory downlink.
struct Fixture {
    handler: DevicesHandler,
    log: MemoryLog,
    topics: KafkaTopics,
    published: Published,
    metrics: Arc<Metrics>,
    /// The offset the next fed record is read at (each one later than the last).
    next_offset: i64,
}

/// Must run inside an actix `System` (the registry starts arbiters).
fn fixture() -> Fixture {
    fixture_with(DevicesConfig {
        arbiters: 2,
        ..DevicesConfig::default()
    })
}

/// [`fixture`] with the devices configuration given.
fn fixture_with(config: DevicesConfig) -> Fixture {
    let metrics = Arc::new(Metrics::new());
    let log = MemoryLog::default();
    let topics = KafkaTopics::default();
    let producer = Producer::in_memory(&log, metrics.clone());
    let reader = PartitionReader::in_memory(&log, topics.device_state(), producer.clone());
    let changelog = Arc::new(Changelog::new(
        producer.clone(),
        producer.clone(),
        reader,
        SideTopics::of(&Default::default()),
        metrics.clone(),
    ));
    let (downlink, published) = MqttPublisher::in_memory(metrics.clone());
    let registry = Arc::new(registry(
        config,
        changelog,
        downlink,
        directory(&metrics),
        metrics.clone(),
    ));
    registry.assigned(&[0]);
    let handler = DevicesHandler {
        registry,
        commands_topic: topics.commands(),
        alerts_topic: topics.alerts(),
        replies_topic: topics.replies(),
        replies: producer,
        answers: tokio::runtime::Handle::current(),
        metrics: metrics.clone(),
        pending: super::PendingWrites::new(super::MAX_PENDING_WRITES, metrics.clone()),
    };
    Fixture {
        handler,
        log,
        topics,
        published,
        metrics,
        next_offset: 0,
    }
}

/// When ingest received a test event: now, since the twin's rules compare it with the
/// service clock (a command's expiry, say).
/// A complete directory whose rule gives devices named `acme-…` to tenant `acme`.
fn directory(metrics: &Arc<Metrics>) -> Arc<crate::tenancy::Directory> {
    let rule = crate::tenancy::ProvisioningRule {
        prefix: "acme-".into(),
        tenant: fleetwatch_protocol::TenantId::parse("acme").unwrap(),
    };
    Arc::new(crate::tenancy::Directory::loaded(
        vec![rule],
        metrics.clone(),
    ))
}

fn received_ms() -> i64 {
    fleetwatch_protocol::now_ms()
}

fn id(device: &str) -> DeviceId {
    DeviceId::parse(device).unwrap()
}

fn object(value: serde_json::Value) -> JsonObject {
    value.as_object().unwrap().clone()
}

fn telemetry(device: &str, seq: u64, temperature: f64) -> DeviceEvent {
    let received_ms = received_ms();
    DeviceEvent {
        device_id: id(device),
        received_ms,
        tenant: None,
        body: DeviceEventBody::Telemetry(TelemetryPayload {
            ts: received_ms - 5,
            seq,
            metrics: [("temperature".into(), temperature)].into(),
        }),
    }
}

fn request(request_id: &str, device: &str, body: DeviceRequestBody) -> DeviceRequest {
    DeviceRequest {
        request_id: request_id.into(),
        reply_to: Some("i1".into()),
        device_id: id(device),
        sent_ms: received_ms(),
        body,
    }
}

fn set_desired(desired: serde_json::Value, if_match: Option<u64>) -> DeviceRequestBody {
    DeviceRequestBody::SetDesired {
        desired: object(desired),
        merge: false,
        if_match,
    }
}

fn reboot(command_id: &str) -> DeviceRequestBody {
    DeviceRequestBody::SendCommand(NewCommand {
        command_id: command_id.into(),
        name: "reboot".into(),
        args: json!({"delay_s": 1}),
        idempotency_key: None,
        ttl_ms: 60_000,
    })
}

impl Fixture {
    /// Hand one record of `topic` (key: the device) to the handler, as the consumer does.
    async fn feed(&mut self, topic: &str, device: &str, payload: &[u8]) {
        let record = Record::new(topic, device, payload).at(0, self.next_offset);
        self.next_offset += 1;
        self.handler.handle(&record).await.expect("handled");
    }

    async fn event(&mut self, event: &DeviceEvent) {
        let topic = self.topics.telemetry();
        let payload = event.to_record(fleetwatch_protocol::RecordEncoding::Compact);
        self.feed(&topic, event.device_id.as_str(), &payload).await;
    }

    async fn ask(&mut self, request: &DeviceRequest) {
        let topic = self.topics.commands();
        let payload = serde_json::to_vec(request).unwrap();
        self.feed(&topic, request.device_id.as_str(), &payload)
            .await;
        // The reply goes out from a task once the journal write landed.
        self.handler
            .pending
            .settle_all()
            .await
            .expect("writes land");
    }

    /// The offsets the handler reports durable since the last call.
    fn durable(&mut self) -> Vec<(String, i32, i64)> {
        self.handler.take_durable().sorted()
    }

    /// Every reply written to `iot.replies`, oldest first.
    fn replies(&self) -> Vec<DeviceReply> {
        self.log.json(&self.topics.replies())
    }

    /// Every twin record written to `iot.device-state` (markers left out), oldest first.
    fn twin_records(&self) -> Vec<Twin> {
        self.log.json(&self.topics.device_state())
    }

    /// The live actor's twin.
    async fn twin(&self, device: &str) -> Twin {
        let actor = self.handler.registry.get(&id(device)).expect("live actor");
        actor.send(GetTwin).await.expect("actor answers").twin
    }

    fn skipped(&self, reason: &str) -> u64 {
        self.metrics
            .skipped
            .with_label_values(&["devices", reason])
            .get()
    }

    fn requests(&self, kind: &str, status: &str) -> u64 {
        self.metrics
            .device_requests
            .with_label_values(&[kind, status])
            .get()
    }
}

#[actix_rt::test]
async fn telemetry_creates_the_actor_and_updates_its_twin() {
    let mut fx = fixture();
    let event = telemetry("d1", 1, 21.5);
    fx.event(&event).await;

    // Coming online is persisted before `handle` returns; the reading is in the twin.
    let records = fx.twin_records();
    assert_eq!(records.len(), 1);
    let first = &records[0];
    assert_eq!(first.device_id, id("d1"));
    assert_eq!(first.version, 1);
    assert_eq!(first.connectivity, Some(Connectivity::Online));
    assert_eq!(first.last_seen_ms, Some(event.received_ms));
    let reading = first.telemetry.as_ref().unwrap();
    assert_eq!((reading.ts, reading.seq), (event.received_ms - 5, 1));
    assert_eq!(pairs(&reading.metrics), [("temperature", 21.5)]);
    let keys: Vec<String> = fx
        .log
        .records(&fx.topics.device_state())
        .into_iter()
        .filter(|record| !record.key.starts_with(crate::kafka::MARKER_PREFIX))
        .map(|record| record.key)
        .collect();
    assert_eq!(keys, ["d1"]);

    // More telemetry changes the live twin but is not persisted on its own.
    fx.event(&telemetry("d1", 2, 22.0)).await;
    let twin = fx.twin("d1").await;
    assert_eq!(twin.version, 1);
    assert_eq!(twin.events, 2);
    let reading = twin.telemetry.as_ref().unwrap();
    assert_eq!(reading.seq, 2);
    assert_eq!(pairs(&reading.metrics), [("temperature", 22.0)]);
    assert_eq!(fx.twin_records().len(), 1);

    let metrics = &fx.metrics;
    assert_eq!(metrics.twin_writes.get(), 1);
    assert_eq!(metrics.device_actors.get(), 1);
    assert_eq!(metrics.devices_online.get(), 1);
    let came_online = metrics
        .connectivity_changes
        .with_label_values(&["online", "activity"]);
    assert_eq!(came_online.get(), 1);
    assert!(fx.replies().is_empty());
    assert!(fx.published.all().is_empty(), "no delta, no command");
}

#[actix_rt::test]
async fn a_state_report_is_persisted_with_a_new_version() {
    let mut fx = fixture();
    fx.event(&telemetry("d1", 1, 21.5)).await;
    let received_ms = received_ms();
    fx.event(&DeviceEvent {
        device_id: id("d1"),
        received_ms,
        tenant: None,
        body: DeviceEventBody::State(fleetwatch_protocol::StatePayload {
            ts: None,
            reported: object(json!({"fan": "off", "firmware": "1.2"})),
        }),
    })
    .await;

    let records = fx.twin_records();
    assert_eq!(records.len(), 2);
    let versions: Vec<u64> = records.iter().map(|twin| twin.version).collect();
    assert_eq!(versions, [1, 2]);
    let last = &records[1];
    assert_eq!(
        last.reported,
        object(json!({"fan": "off", "firmware": "1.2"}))
    );
    assert_eq!(last.reported_ms, Some(received_ms));
    assert_eq!(fx.twin("d1").await, *last);
}

#[actix_rt::test]
async fn a_desired_state_write_is_answered_and_a_stale_if_match_conflicts() {
    let mut fx = fixture();
    fx.ask(&request(
        "r1",
        "d1",
        set_desired(json!({"fan": "on"}), Some(0)),
    ))
    .await;
    let replies = fx.replies();
    assert_eq!(replies.len(), 1);
    assert_eq!(
        replies[0],
        DeviceReply {
            request_id: "r1".into(),
            reply_to: "i1".into(),
            status: ReplyStatus::Ok,
            body: json!({"desired": {"fan": "on"}, "version": 1, "delta": {"fan": "on"}}),
        }
    );
    assert_eq!(fx.log.records(&fx.topics.replies())[0].key, "i1");
    let records = fx.twin_records();
    assert_eq!(records.len(), 1, "written before the reply");
    assert_eq!((records[0].version, records[0].desired_version()), (1, 1));
    assert_eq!(records[0].desired(), &object(json!({"fan": "on"})));

    fx.ask(&request(
        "r2",
        "d1",
        set_desired(json!({"fan": "off"}), Some(0)),
    ))
    .await;
    let stale = &fx.replies()[1];
    assert_eq!(stale.request_id, "r2");
    assert_eq!(stale.status, ReplyStatus::Conflict);
    assert_eq!(
        stale.body,
        json!({"error": "desired state is at version 1, not 0; read it again and retry"})
    );
    assert_eq!(
        fx.twin_records().len(),
        1,
        "a refused write changes nothing"
    );
    assert_eq!(fx.twin("d1").await.desired(), &object(json!({"fan": "on"})));
    assert_eq!(fx.requests("set_desired", "ok"), 1);
    assert_eq!(fx.requests("set_desired", "conflict"), 1);
    assert!(
        fx.published.all().is_empty(),
        "the device was never seen online"
    );
}

#[actix_rt::test]
async fn desired_state_for_an_online_device_is_sent_as_a_delta() {
    let mut fx = fixture();
    fx.event(&telemetry("d1", 1, 21.5)).await;
    let body = set_desired(json!({"fan": "on", "rate": 5}), None);
    fx.ask(&request("r1", "d1", body)).await;

    let published = fx.published.take();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, "devices/d1/desired");
    let sent: DesiredPayload = serde_json::from_slice(&published[0].1).unwrap();
    assert_eq!(sent.version, 1);
    assert_eq!(sent.delta, object(json!({"fan": "on", "rate": 5})));
    assert_eq!(fx.metrics.downlink_published.get(), 1);
    assert_eq!(fx.replies()[0].status, ReplyStatus::Ok);
}

#[actix_rt::test]
async fn a_command_for_an_offline_device_is_queued_then_sent_when_it_appears() {
    let mut fx = fixture();
    fx.ask(&request("r1", "d1", reboot("c1"))).await;

    let reply = &fx.replies()[0];
    assert_eq!(
        (reply.request_id.as_str(), reply.status),
        ("r1", ReplyStatus::Created)
    );
    let command: CommandRecord = serde_json::from_value(reply.body.clone()).unwrap();
    assert_eq!(command.command_id, "c1");
    assert_eq!(command.state, CommandState::Queued);
    assert_eq!(command.attempts, 0);
    let states: Vec<CommandState> = command.history.iter().map(|s| s.state).collect();
    assert_eq!(states, [CommandState::Queued]);
    let journaled = fx.twin_records();
    assert_eq!(journaled.len(), 1);
    assert_eq!(journaled[0].commands(), [command]);
    assert!(fx.published.all().is_empty());
    let transitions = fx.metrics.clone();
    let transitions = &transitions.command_transitions;
    assert_eq!(transitions.with_label_values(&["queued"]).get(), 1);
    assert_eq!(fx.requests("send_command", "created"), 1);

    // The device shows up: the journaled command goes out and the journal says so.
    fx.event(&telemetry("d1", 1, 21.5)).await;
    let published = fx.published.take();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, "devices/d1/commands");
    let sent: CommandPayload = serde_json::from_slice(&published[0].1).unwrap();
    assert_eq!(
        (sent.command_id.as_str(), sent.name.as_str()),
        ("c1", "reboot")
    );
    assert_eq!(sent.args, json!({"delay_s": 1}));
    let last = fx.twin_records().pop().unwrap();
    assert_eq!(last.commands()[0].state, CommandState::Sent);
    assert_eq!(last.commands()[0].attempts, 1);
    assert_eq!(transitions.with_label_values(&["sent"]).get(), 1);
}

#[actix_rt::test]
async fn a_command_for_an_online_device_is_sent_at_once_and_only_once() {
    let mut fx = fixture();
    fx.event(&telemetry("d1", 1, 21.5)).await;
    fx.ask(&request("r1", "d1", reboot("c1"))).await;
    let reply = &fx.replies()[0];
    assert_eq!(reply.status, ReplyStatus::Created);
    assert_eq!(reply.body["state"], json!("sent"));
    let published = fx.published.take();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].0, "devices/d1/commands");

    // The same command again (a retried request) returns it, sends nothing new.
    fx.ask(&request("r2", "d1", reboot("c1"))).await;
    let again = &fx.replies()[1];
    assert_eq!(
        (again.request_id.as_str(), again.status),
        ("r2", ReplyStatus::Ok)
    );
    assert_eq!(again.body["command_id"], json!("c1"));
    assert!(fx.published.all().is_empty());
    assert_eq!(fx.requests("send_command", "created"), 1);
    assert_eq!(fx.requests("send_command", "ok"), 1);
    // A person waits for each answer: the journal write goes through the urgent lane
    // (the retried request changed nothing, so wrote nothing).
    assert_eq!(fx.metrics.twin_urgent_writes.get(), 1);
}

#[actix_rt::test]
async fn a_read_for_an_unknown_device_is_not_found_and_creates_nothing() {
    let mut fx = fixture();
    fx.ask(&request("r1", "ghost", DeviceRequestBody::GetTwin))
        .await;
    fx.ask(&request("r2", "ghost", DeviceRequestBody::ListCommands))
        .await;
    let replies = fx.replies();
    assert_eq!(replies.len(), 2);
    for (reply, request_id) in replies.iter().zip(["r1", "r2"]) {
        assert_eq!(reply.request_id, request_id);
        assert_eq!(reply.status, ReplyStatus::NotFound);
        assert_eq!(reply.body, json!({"error": "no device ghost is known"}));
    }
    assert!(fx.handler.registry.is_empty());
    assert!(fx.twin_records().is_empty());
    assert_eq!(fx.metrics.device_actors.get(), 0);
    assert_eq!(fx.requests("get_twin", "not_found"), 1);
    assert_eq!(fx.requests("list_commands", "not_found"), 1);
}

#[actix_rt::test]
async fn reads_of_a_known_device_answer_from_its_actor() {
    let mut fx = fixture();
    fx.ask(&request(
        "r1",
        "d1",
        set_desired(json!({"fan": "on"}), None),
    ))
    .await;
    fx.ask(&request("r2", "d1", DeviceRequestBody::GetTwin))
        .await;
    let get_command = DeviceRequestBody::GetCommand {
        command_id: "nope".into(),
    };
    fx.ask(&request("r3", "d1", get_command)).await;

    let replies = fx.replies();
    let view = &replies[1];
    assert_eq!(view.status, ReplyStatus::Ok);
    assert_eq!(view.body["device_id"], json!("d1"));
    assert_eq!(view.body["desired"], json!({"fan": "on"}));
    assert_eq!(view.body["delta"], json!({"fan": "on"}));
    assert_eq!(view.body["version"], json!(1));
    assert_eq!(replies[2].status, ReplyStatus::NotFound);
    assert_eq!(fx.requests("get_twin", "ok"), 1);
    assert_eq!(fx.requests("get_command", "not_found"), 1);
}

#[actix_rt::test]
async fn a_request_without_reply_to_is_applied_without_a_reply() {
    let mut fx = fixture();
    let mut silent = request("r1", "d1", set_desired(json!({"fan": "on"}), None));
    silent.reply_to = None;
    fx.ask(&silent).await;
    assert!(fx.replies().is_empty());
    assert_eq!(
        fx.twin_records()[0].desired(),
        &object(json!({"fan": "on"}))
    );
    assert_eq!(fx.requests("set_desired", "ok"), 1);
    // Nobody waits for it (a fleet job's command): it goes with the telemetry.
    assert_eq!(fx.metrics.twin_urgent_writes.get(), 0);
}

/// Two producers keep no order between them, and compaction keeps a device's last
/// record: a device's writes change lane only once its newest write has landed.
#[actix_rt::test]
async fn a_devices_writes_change_lane_only_once_its_newest_write_landed() {
    let metrics = Arc::new(Metrics::new());
    let (bulk_log, urgent_log) = (MemoryLog::default(), MemoryLog::default());
    let topics = KafkaTopics::default();
    let bulk = Producer::in_memory(&bulk_log, metrics.clone());
    let reader = PartitionReader::in_memory(&bulk_log, topics.device_state(), bulk.clone());
    let changelog = Arc::new(Changelog::new(
        bulk,
        Producer::in_memory(&urgent_log, metrics.clone()),
        reader,
        SideTopics::of(&topics),
        metrics.clone(),
    ));
    let twins_in = |log: &MemoryLog| log.records(&topics.device_state()).len();
    let (mut twin, mut last) = (Twin::new(id("d1")), None);
    let mut write = |lane| changelog.write(&mut twin, &Effects::persist(), lane, &mut last);
    let landed =
        |mut write: changelog::ChangelogWrite| write.try_confirmed().expect("in memory").unwrap();

    let command = write(Lane::Urgent);
    // The command's write has not landed: the telemetry behind it follows it.
    let telemetry = write(Lane::Bulk);
    assert_eq!((twins_in(&bulk_log), twins_in(&urgent_log)), (0, 2));
    landed(command);
    landed(telemetry);
    let telemetry = write(Lane::Bulk);
    assert_eq!((twins_in(&bulk_log), twins_in(&urgent_log)), (1, 2));
    // Nor does a command overtake telemetry still on its way.
    let command = write(Lane::Urgent);
    assert_eq!((twins_in(&bulk_log), twins_in(&urgent_log)), (2, 2));
    landed(telemetry);
    landed(command);
    write(Lane::Urgent);
    assert_eq!((twins_in(&bulk_log), twins_in(&urgent_log)), (2, 3));
    // The first write's directory entry went with it.
    assert_eq!(urgent_log.records(&topics.device_directory()).len(), 1);
    assert_eq!(metrics.twin_urgent_writes.get(), 3);
    assert_eq!(metrics.twin_urgent_writes_held.get(), 1);
}

#[actix_rt::test]
async fn telemetry_of_two_devices_goes_to_two_actors() {
    let mut fx = fixture();
    fx.event(&telemetry("d2", 1, 30.0)).await;
    fx.event(&telemetry("d1", 1, 10.0)).await;
    fx.event(&telemetry("d2", 2, 31.0)).await;

    let registry = &fx.handler.registry;
    assert_eq!(registry.len(), 2);
    let all = registry.all();
    let ids: Vec<&str> = all.iter().map(|(id, _)| id.as_str()).collect();
    assert_eq!(ids, ["d1", "d2"]);
    assert_ne!(all[0].1, all[1].1);
    assert_eq!(registry.get(&id("d1")), Some(all[0].1.clone()));
    let (d1, d2) = (fx.twin("d1").await, fx.twin("d2").await);
    assert_eq!((d1.events, d2.events), (1, 2));
    let reading = |twin: &Twin| twin.telemetry.as_ref().unwrap().metrics[0];
    assert_eq!((reading(&d1), reading(&d2)), (10.0, 31.0));
    let keys: Vec<String> = fx
        .log
        .json::<Twin>(&fx.topics.device_state())
        .into_iter()
        .map(|twin| twin.device_id.to_string())
        .collect();
    assert_eq!(keys, ["d2", "d1"]);
    assert_eq!(fx.metrics.device_actors.get(), 2);
}

#[actix_rt::test]
async fn duplicate_telemetry_is_counted_and_not_applied() {
    let mut fx = fixture();
    fx.event(&telemetry("d1", 1, 21.0)).await;
    fx.event(&telemetry("d1", 2, 22.0)).await;
    fx.event(&telemetry("d1", 1, 99.0)).await;
    fx.event(&telemetry("d1", 2, 99.0)).await;

    assert_eq!(fx.skipped("duplicate"), 2);
    let twin = fx.twin("d1").await;
    assert_eq!((twin.events, twin.duplicates), (2, 2));
    let reading = twin.telemetry.unwrap();
    assert_eq!((reading.seq, reading.metrics[0]), (2, 22.0));
}

#[actix_rt::test]
async fn undecodable_records_are_skipped() {
    let mut fx = fixture();
    let (telemetry_topic, commands_topic) = (fx.topics.telemetry(), fx.topics.commands());
    fx.feed(&telemetry_topic, "d1", b"not json").await;
    fx.feed(&telemetry_topic, "d1", br#"{"device_id":"d1"}"#)
        .await;
    fx.feed(&commands_topic, "d1", b"{}").await;

    assert_eq!(fx.skipped("undecodable"), 3);
    assert!(fx.handler.registry.is_empty());
    assert!(fx.replies().is_empty());
    assert!(fx.twin_records().is_empty());
    // A good record afterwards is handled as usual.
    fx.event(&telemetry("d1", 1, 21.5)).await;
    assert_eq!(fx.handler.registry.len(), 1);
}

#[actix_rt::test]
async fn a_new_owner_restores_twins_from_the_changelog() {
    let mut fx = fixture();
    let mut online = Twin::new(id("d1"));
    let rules = TwinRules::default();
    online.apply_event(&telemetry("d1", 7, 21.5).body, received_ms(), &rules);
    let mut quiet = Twin::new(id("d2"));
    quiet
        .set_desired(object(json!({"fan": "on"})), false, None, received_ms())
        .unwrap();
    let earlier_owner = Producer::in_memory(&fx.log, fx.metrics.clone());
    for twin in [&online, &quiet] {
        let payload = serde_json::to_vec(twin).unwrap();
        let topic = fx.topics.device_state();
        earlier_owner
            .enqueue(&topic, twin.device_id.as_str(), &payload)
            .await;
    }

    // The first record of the partition restores it: the online twin gets an actor,
    // the quiet one is read back only when asked for.
    fx.ask(&request("r1", "d2", DeviceRequestBody::GetTwin))
        .await;
    let reply = &fx.replies()[0];
    assert_eq!(reply.status, ReplyStatus::Ok);
    assert_eq!(reply.body["desired"], json!({"fan": "on"}));
    assert_eq!(fx.metrics.twin_revivals.get(), 1);
    assert_eq!(fx.twin("d1").await, online);
    assert_eq!(fx.handler.registry.len(), 2);
    assert_eq!(fx.handler.registry.known_devices(), 2);
    // A replayed telemetry record is recognised as a duplicate after the restore.
    fx.event(&telemetry("d1", 7, 21.5)).await;
    assert_eq!(fx.skipped("duplicate"), 1);
}

#[actix_rt::test]
async fn a_records_offset_is_reported_durable_once_its_twin_write_landed() {
    let mut fx = fixture();
    assert!(
        fx.handler.defers_commit(),
        "the loop must not store offsets itself"
    );
    let topic = fx.topics.telemetry();
    for (offset, seq) in [(7, 1), (8, 2)] {
        let payload = serde_json::to_vec(&telemetry("d1", seq, 20.0)).unwrap();
        let record = Record::new(&topic, "d1", &payload).at(0, offset);
        fx.handler.handle(&record).await.expect("handled");
    }
    // The in-memory log confirms at once: the first record's write (coming online) has
    // landed by the time the second is handled, and nothing stays pending.
    fx.handler.on_tick().await.expect("ticks");
    assert_eq!(fx.durable(), vec![(topic, 0, 8)]);
    assert_eq!(fx.handler.pending.len(), 0);
    assert_eq!(fx.metrics.twin_writes_pending.get(), 0);
    assert!(fx.handler.take_durable().is_empty(), "reported once");
}

#[actix_rt::test]
async fn a_command_is_answered_and_its_offset_durable_only_once_its_journal_write_landed() {
    let mut fx = fixture();
    let topic = fx.topics.commands();
    let payload = serde_json::to_vec(&request("r1", "d1", reboot("c1"))).unwrap();
    let record = Record::new(&topic, "d1", &payload).at(0, 3);
    fx.handler.handle(&record).await.expect("handled");
    // Handled without waiting for the journal write: the task that waits for it (and
    // then replies) has not run yet, so nothing is answered and nothing is durable.
    assert_eq!(fx.handler.pending.len(), 1);
    assert!(fx.replies().is_empty());
    assert!(fx.handler.take_durable().is_empty());

    fx.handler.pending.settle_all().await.expect("writes land");
    let journaled = fx
        .twin_records()
        .pop()
        .expect("the command's journal write");
    assert_eq!(journaled.commands().len(), 1);
    assert_eq!(fx.replies()[0].status, ReplyStatus::Created);
    assert_eq!(fx.durable(), vec![(topic, 0, 3)]);
    assert_eq!(
        fx.metrics
            .device_requests
            .with_label_values(&["send_command", "created"])
            .get(),
        1
    );
}

#[actix_rt::test]
async fn an_event_read_again_after_a_crash_is_not_applied_twice() {
    let mut fx = fixture();
    fx.event(&telemetry("d1", 1, 21.5)).await;
    let report = DeviceEvent {
        device_id: id("d1"),
        received_ms: received_ms(),
        tenant: None,
        body: DeviceEventBody::State(fleetwatch_protocol::StatePayload {
            ts: None,
            reported: object(json!({"fan": "off"})),
        }),
    };
    fx.event(&report).await;
    let stored = fx.twin_records().pop().expect("the report is persisted");
    assert_eq!(
        stored.applied,
        Some(SourcePosition {
            partition: 0,
            offset: 1
        }),
        "the changelog's twin says which records it holds"
    );

    // The consumer reads the report again from an older committed offset, as after a
    // SIGKILL: the twin holds it already.
    let payload = serde_json::to_vec(&report).unwrap();
    let topic = fx.topics.telemetry();
    let replayed = Record::new(&topic, "d1", &payload).at(0, 1);
    fx.handler.handle(&replayed).await.expect("handled");
    let twin = fx.twin("d1").await;
    assert_eq!((twin.events, twin.duplicates, twin.version), (2, 1, 2));
    assert_eq!(fx.twin_records().len(), 2, "nothing written again");
    assert_eq!(fx.skipped("duplicate"), 1);

    // The same offset of another partition is another record.
    let mut restored = stored.clone();
    let other = SourcePosition {
        partition: 1,
        offset: 1,
    };
    assert!(!restored.already_applied(other));
    assert!(restored.already_applied(other), "and then it is applied");
}

/// Timers that fire within a test: silence after 100 ms, passivation after 300 ms idle.
fn fast_timers() -> DevicesConfig {
    let mut config = DevicesConfig {
        arbiters: 2,
        passivate_after_ms: 300,
        ..DevicesConfig::default()
    };
    config.twin.offline_after_ms = 100;
    config
}

/// Wait (real time) until `done`, or panic after a few seconds.
async fn eventually(what: &str, mut done: impl FnMut() -> bool) {
    for _ in 0..200 {
        if done() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    panic!("timed out waiting until {what}");
}

#[actix_rt::test]
async fn a_silent_device_goes_offline_then_its_idle_actor_passivates() {
    let mut fx = fixture_with(fast_timers());
    fx.event(&telemetry("d1", 1, 21.5)).await;
    let passivations = fx.metrics.device_passivations.clone();
    eventually("the actor passivated", || passivations.get() == 1).await;
    assert!(fx.handler.registry.get(&id("d1")).is_none());
    let records = fx.twin_records();
    let offline = records
        .iter()
        .find(|twin| twin.connectivity == Some(Connectivity::Offline))
        .expect("silence is persisted");
    let change = offline.connectivity_history.last().unwrap();
    assert_eq!(change.cause, super::twin::ConnectivityCause::Silence);
    let last = records.last().unwrap();
    assert_eq!(
        last.telemetry.as_ref().unwrap().seq,
        1,
        "written on leaving"
    );
}

#[actix_rt::test]
async fn a_command_never_acknowledged_expires_and_then_the_actor_passivates() {
    let mut fx = fixture_with(fast_timers());
    let mut command = reboot("c1");
    if let DeviceRequestBody::SendCommand(new) = &mut command {
        new.ttl_ms = 200;
    }
    fx.ask(&request("r1", "d1", command)).await;
    let passivations = fx.metrics.device_passivations.clone();
    eventually("the actor passivated", || passivations.get() == 1).await;
    let last = fx.twin_records().pop().unwrap();
    assert_eq!(last.commands()[0].state, CommandState::Expired);
}

/// A twin's last reading as (name, value) pairs.
fn pairs(metrics: &fleetwatch_models::names::Named<f64>) -> Vec<(&str, f64)> {
    metrics.iter().map(|(name, value)| (name, *value)).collect()
}
