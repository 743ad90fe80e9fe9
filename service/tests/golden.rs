//! Upgrade compatibility: every record format on fleetwatch's Kafka topics has golden
//! files in `tests/golden/`, written by the code of the release that introduced the
//! format, and the current code must read every one of them. A rolling upgrade then
//! never strands state: the new version reads what the old one wrote.
//!
//! The rule (docs/reliability.md): a format change that old readers or the new reader
//! would misread gets a new version (`name.vN+1.json|bin`) with its own golden file,
//! and the old versions' files stay and keep being read. The newest file of each format
//! is also written back byte for byte (binary) or value for value (JSON) by the current
//! code: a test failing there means the format changed without a new version.
//!
//! Regenerate the newest version of every format (deterministic: fixed samples, a
//! model trained on a fixed sequence):
//! `FLEETWATCH_WRITE_GOLDEN=1 cargo test -p fleetwatch --test golden`.
//! Older versions are never rewritten.

use fleetwatch_protocol::MetricValues;
use std::collections::BTreeMap;
use std::path::PathBuf;

use fleetwatch::devices::{ConnectivityCause, ConnectivityChange, LastTelemetry, Twin};
use fleetwatch_models::production::{self, ModelTrainer, Params};
use fleetwatch_models::{Observation, Scorer, Trainer};
use fleetwatch_protocol::{
    AckOutcome, AckPayload, Alarm, AlarmAction, AlarmChange, AlarmEvent, AlarmEventKind, Alert,
    AlertState, CommandRecord, CommandState, CommandStep, Connectivity, Contributor, Damping,
    DeadLetter, DeviceEvent, DeviceEventBody, DeviceId, DeviceReply, DeviceRequest,
    DeviceRequestBody, DirectoryEntry, Feedback, JsonObject, NewCommand, ParamsEnvelope,
    ReplyStatus, ScoreBatch, ScoreRecord, ScoresRecord, SequenceTracker, Severity,
    TelemetryPayload, TenantId, Verdict,
};
use serde::{de::DeserializeOwned, Serialize};
use serde_json::json;

const T0: i64 = 1_750_000_000_000;

fn golden_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

fn writing() -> bool {
    std::env::var_os("FLEETWATCH_WRITE_GOLDEN").is_some()
}

fn device() -> DeviceId {
    DeviceId::parse("golden-pump-7").unwrap()
}

fn tenant() -> TenantId {
    TenantId::parse("acme").unwrap()
}

fn object(value: serde_json::Value) -> JsonObject {
    value.as_object().expect("an object").clone()
}

/// Every golden file of format `name` (`name.vN.ext`), oldest first.
fn versions(name: &str, ext: &str) -> Vec<(u32, PathBuf)> {
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir(golden_dir())
        .expect("tests/golden exists")
        .filter_map(|entry| {
            let path = entry.ok()?.path();
            let file = path.file_name()?.to_str()?;
            let version = file
                .strip_prefix(&format!("{name}.v"))?
                .strip_suffix(&format!(".{ext}"))?
                .parse()
                .ok()?;
            Some((version, path))
        })
        .collect();
    found.sort();
    assert!(!found.is_empty(), "no golden file for {name}");
    found
}

/// A JSON format: every version decodes with the current code and passes `check`; the
/// newest is written back by the current code unchanged. With FLEETWATCH_WRITE_GOLDEN
/// the newest version is first written from `sample`.
fn json_format<T: Serialize + DeserializeOwned>(
    name: &str,
    newest: u32,
    sample: T,
    check: impl Fn(&T),
) {
    if writing() {
        let text = serde_json::to_string_pretty(&sample).unwrap() + "\n";
        let path = golden_dir().join(format!("{name}.v{newest}.json"));
        std::fs::write(path, text).unwrap();
    }
    let files = versions(name, "json");
    assert_eq!(files.last().unwrap().0, newest, "{name}: newest version");
    for (version, path) in &files {
        let text = std::fs::read_to_string(path).unwrap();
        let read: T = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{name} v{version} no longer reads: {e}"));
        check(&read);
        if *version == newest {
            let written = serde_json::to_value(&read).unwrap();
            let stored: serde_json::Value = serde_json::from_str(&text).unwrap();
            assert_eq!(
                written, stored,
                "{name} v{version}: the current code writes it differently; a format change needs a new version (docs/reliability.md)"
            );
        }
    }
}

/// A binary format: like [`json_format`], compared byte for byte.
fn binary_format<T>(
    name: &str,
    newest: u32,
    sample: Vec<u8>,
    decode: impl Fn(&[u8]) -> T,
    encode: impl Fn(&T) -> Vec<u8>,
    check: impl Fn(u32, &T),
) {
    if writing() {
        let path = golden_dir().join(format!("{name}.v{newest}.bin"));
        std::fs::write(path, &sample).unwrap();
    }
    let files = versions(name, "bin");
    assert_eq!(files.last().unwrap().0, newest, "{name}: newest version");
    for (version, path) in &files {
        let bytes = std::fs::read(path).unwrap();
        let read = decode(&bytes);
        check(*version, &read);
        if *version == newest {
            assert!(
                encode(&read) == bytes,
                "{name} v{version}: the current code writes it differently; a format change needs a new version (docs/reliability.md)"
            );
        }
    }
}

fn metrics_at(step: u32) -> MetricValues {
    let x = f64::from(step);
    BTreeMap::from([
        ("temp".into(), 20.0 + (x / 7.0).sin()),
        ("pressure".into(), 101.0 + (x / 11.0).cos() * 0.5),
        ("vibration".into(), 0.02 + (x % 5.0) * 0.001),
    ])
}

/// A trainer that learned from a fixed sequence: deterministic.
fn trained() -> ModelTrainer {
    let mut trainer = production::trainer(&production::Config::default());
    for step in 0..400 {
        let metrics = metrics_at(step);
        trainer.update(&Observation {
            ts_ms: T0 + i64::from(step) * 1000,
            metrics: &metrics,
        });
    }
    trainer
}

fn damping() -> Vec<Damping> {
    vec![Damping {
        cause: "pressure:deviation".into(),
        factor: 0.8,
        since_ms: T0 + 5_000,
    }]
}

fn envelope(params: Vec<u8>, damping: Vec<Damping>) -> ParamsEnvelope<Vec<u8>> {
    ParamsEnvelope {
        device_id: device(),
        model_id: fleetwatch_protocol::PRODUCTION_MODEL.into(),
        version: 42,
        trained_events: 400,
        published_ms: T0 + 400_000,
        damping,
        params,
    }
}

fn check_envelope(envelope: &ParamsEnvelope<Vec<u8>>) {
    assert_eq!(envelope.device_id, device());
    assert_eq!((envelope.version, envelope.trained_events), (42, 400));
}

/// `iot.model-params`: the envelope (v1 without damping, v2 with) around the scorer's
/// parameters, which a scorer must be able to score with.
#[test]
fn model_params_of_every_version_read() {
    let params = trained().snapshot().to_bytes();
    for (name, damping) in [("model-params-plain", vec![]), ("model-params", damping())] {
        let newest = if damping.is_empty() { 1 } else { 2 };
        binary_format(
            name,
            newest,
            envelope(params.clone(), damping).encode(),
            |bytes| ParamsEnvelope::decode(bytes).expect("the envelope reads"),
            ParamsEnvelope::encode,
            |_, envelope| {
                check_envelope(envelope);
                assert_eq!(
                    envelope.model_id, "production",
                    "old records are production's"
                );
                let params = Params::from_bytes(&envelope.params).expect("the parameters read");
                let metrics = metrics_at(401);
                let score = production::scorer().score(
                    &params,
                    &Observation {
                        ts_ms: T0 + 401_000,
                        metrics: &metrics,
                    },
                );
                assert!(score.value.is_finite(), "{score:?}");
            },
        );
    }
}

/// `iot.model-params` and `iot.trainer-state` records of a model other than production
/// (docs/shadow.md): layout 3, naming the model (key `{device}/{model}`).
#[test]
fn candidate_model_params_read() {
    let params = trained().snapshot().to_bytes();
    let candidate = ParamsEnvelope {
        model_id: "cand-1".into(),
        ..envelope(params, damping())
    };
    binary_format(
        "model-params-candidate",
        3,
        candidate.encode(),
        |bytes| ParamsEnvelope::decode(bytes).expect("the envelope reads"),
        ParamsEnvelope::encode,
        |_, envelope| {
            check_envelope(envelope);
            assert_eq!(envelope.model_id, "cand-1");
            assert_eq!(envelope.damping, damping());
            Params::from_bytes(&envelope.params).expect("the parameters read");
        },
    );
}

/// `iot.models`: the model registry's events (docs/shadow.md).
#[test]
fn model_registry_events_read() {
    use fleetwatch_protocol::{ModelEvent, ModelEventBody, ShadowScope};
    let event = |body| ModelEvent {
        at_ms: T0,
        by: "ops".into(),
        body,
    };
    let samples = [
        (
            "model-event-created",
            event(ModelEventBody::Created {
                model_id: "cand-1".into(),
                config: json!({"trainer": {"model": {"threshold": 0.7}}}),
            }),
        ),
        (
            "model-event-shadow-started",
            event(ModelEventBody::ShadowStarted {
                model_id: "cand-1".into(),
                scope: ShadowScope {
                    tenant: Some(tenant()),
                    sample_percent: Some(20),
                },
            }),
        ),
        (
            "model-event-shadow-stopped",
            event(ModelEventBody::ShadowStopped {
                model_id: "cand-1".into(),
            }),
        ),
        (
            "model-event-promoted",
            event(ModelEventBody::Promoted {
                model_id: "cand-1".into(),
                tenant: Some(tenant()),
            }),
        ),
        (
            "model-event-rolled-back",
            event(ModelEventBody::RolledBack { tenant: None }),
        ),
    ];
    for (name, sample) in samples {
        json_format(name, 1, sample, |read: &ModelEvent| {
            assert_eq!((read.at_ms, read.by.as_str()), (T0, "ops"));
        });
    }
}

/// `iot.trainer-state`: the same envelope around the trainer's checkpoint, from which a
/// trainer continues learning.
#[test]
fn trainer_state_of_every_version_reads() {
    binary_format(
        "trainer-state",
        2,
        envelope(trained().state_bytes(), damping()).encode(),
        |bytes| ParamsEnvelope::decode(bytes).expect("the envelope reads"),
        ParamsEnvelope::encode,
        |_, envelope| {
            check_envelope(envelope);
            assert_eq!(envelope.damping, damping());
            let config = production::Config::default();
            let mut trainer = ModelTrainer::from_state_bytes(config, &envelope.params)
                .expect("the checkpoint reads");
            assert_eq!(trainer.events(), 400);
            let metrics = metrics_at(401);
            trainer.update(&Observation {
                ts_ms: T0 + 401_000,
                metrics: &metrics,
            });
            assert_eq!(trainer.events(), 401);
            // The checkpoint inside is the same bytes the trainer writes now (its layout in
            // memory may change, its format only with its version).
            assert!(
                envelope.params == trained().state_bytes(),
                "the trainer's checkpoint is written differently: a new state version"
            );
        },
    );
}

/// A checkpoint written before the last values were kept as steps (`b294bce`: the values
/// ring as `f64`s, its oldest not at the start): it reads, its values become steps, and it
/// learns on as the same trainer written now does.
#[test]
fn trainer_state_from_before_the_steps_reads() {
    let bytes = std::fs::read(golden_dir().join("trainer-state-before-steps.bin")).unwrap();
    let envelope = ParamsEnvelope::decode(&bytes).expect("the envelope reads");
    let config = production::Config::default();
    let mut old = ModelTrainer::from_state_bytes(config.clone(), &envelope.params)
        .expect("the checkpoint reads");
    let mut now = trained();
    assert_eq!(old.events(), now.events());
    for step in 400..460 {
        let metrics = metrics_at(step);
        let observation = Observation {
            ts_ms: T0 + i64::from(step) * 1_000,
            metrics: &metrics,
        };
        old.update(&observation);
        now.update(&observation);
    }
    // The same model, but for the last bits of the values (a shape's prototype may move
    // a unit of 1/3000 one way or the other).
    let (old, now) = (old.snapshot(), now.snapshot());
    for ((name, a), (_, b)) in old.metrics.iter().zip(now.metrics.iter()) {
        let close = |x: f64, y: f64, by: f64| (x - y).abs() <= by * x.abs().max(y.abs()).max(1.0);
        assert!(close(a.value_mean, b.value_mean, 1e-9), "{name}");
        assert!(close(a.error_std, b.error_std, 1e-9), "{name}");
        assert!(
            close(a.shape_mean.into(), b.shape_mean.into(), 1e-3),
            "{name}: {} {}",
            a.shape_mean,
            b.shape_mean
        );
        assert_eq!(a.n, b.n, "{name}");
    }
}

fn command() -> CommandRecord {
    CommandRecord {
        command_id: "cmd-1".into(),
        name: "reboot".into(),
        args: json!({"delay_s": 5}),
        idempotency_key: Some("key-1".into()),
        state: CommandState::Sent,
        created_ms: T0,
        expires_ms: T0 + 60_000,
        attempts: 1,
        next_attempt_ms: Some(T0 + 10_000),
        history: vec![
            CommandStep {
                state: CommandState::Queued,
                at_ms: T0,
                detail: None,
            },
            CommandStep {
                state: CommandState::Sent,
                at_ms: T0 + 100,
                detail: Some("published".into()),
            },
        ],
    }
}

fn alarm() -> Alarm {
    Alarm {
        alarm_id: format!("{}:17", device()),
        device_id: device(),
        tenant: Some(tenant()),
        severity: Severity::Major,
        active: true,
        acknowledged: true,
        verdict: Some(Verdict::FalsePositive),
        created_ms: T0,
        updated_ms: T0 + 2_000,
        cleared_ms: None,
        peak_score: 0.91,
        threshold: 0.65,
        reason: "pressure 140.2 is far above its usual 101.0".into(),
        cause: Some("pressure:deviation".into()),
        count: 2,
        last_alert_seq: 18,
        changes: 3,
        history: vec![
            AlarmChange {
                kind: AlarmEventKind::Created,
                at_ms: T0,
                by: "scorer".into(),
                detail: None,
            },
            AlarmChange {
                kind: AlarmEventKind::Acknowledged,
                at_ms: T0 + 2_000,
                by: "alice".into(),
                detail: Some("false_positive".into()),
            },
        ],
    }
}

fn twin() -> Twin {
    let mut sequence = SequenceTracker::default();
    for seq in [1, 2, 3, 5, 130] {
        sequence.accept(seq);
    }
    let mut twin = Twin::new(device());
    twin.version = 9;
    let extras = twin.extras_mut();
    extras.desired_version = 2;
    extras.desired = object(json!({"led": "blue", "rate_s": 5}));
    extras.desired_ms = Some(T0 + 2_000);
    extras.commands = vec![command()];
    extras.alarms = vec![alarm()];
    twin.reported = object(json!({"led": "red", "firmware": {"version": "1.2.3"}}));
    twin.reported_ms = Some(T0 + 1_000);
    twin.connectivity = Some(Connectivity::Online);
    twin.connectivity_history.push(ConnectivityChange {
        to: Connectivity::Online,
        at_ms: T0,
        cause: ConnectivityCause::StatusMessage,
    });
    twin.last_seen_ms = Some(T0 + 3_000);
    twin.telemetry = Some(LastTelemetry::from(TelemetryPayload {
        ts: T0 + 2_900,
        seq: 130,
        metrics: metrics_at(130),
    }));
    twin.sequence = sequence;
    twin.events = 131;
    twin.duplicates = 4;
    twin.tenant = Some(tenant());
    twin.listed = true;
    twin
}

/// `iot.device-state`: the twin changelog.
#[test]
fn twin_changelog_reads() {
    json_format("twin", 1, twin(), |read: &Twin| {
        assert_eq!(read.device_id, device());
        assert_eq!((read.version, read.events), (9, 131));
        assert_eq!(read.sequence.highest(), Some(130));
        assert_eq!(read.commands()[0].state, CommandState::Sent);
        assert_eq!(read.alarms()[0].verdict, Some(Verdict::FalsePositive));
    });
}

fn request(body: DeviceRequestBody) -> DeviceRequest {
    DeviceRequest {
        request_id: "req-1".into(),
        reply_to: Some("instance-a".into()),
        device_id: device(),
        sent_ms: T0,
        body,
    }
}

/// `iot.commands`: the device requests, one golden file per kind.
#[test]
fn device_requests_read() {
    let kinds = [
        DeviceRequestBody::SendCommand(NewCommand {
            command_id: "cmd-1".into(),
            name: "reboot".into(),
            args: json!({"delay_s": 5}),
            idempotency_key: Some("key-1".into()),
            ttl_ms: 60_000,
        }),
        DeviceRequestBody::SetDesired {
            desired: object(json!({"led": "blue"})),
            merge: true,
            if_match: Some(2),
        },
        DeviceRequestBody::GetTwin,
        DeviceRequestBody::GetCommand {
            command_id: "cmd-1".into(),
        },
        DeviceRequestBody::ListCommands,
        DeviceRequestBody::AlarmAction {
            alarm_id: format!("{}:17", device()),
            action: AlarmAction::Acknowledge {
                verdict: Some(Verdict::TruePositive),
            },
            by: "alice".into(),
        },
        DeviceRequestBody::SetTenant {
            tenant: Some(tenant()),
        },
    ];
    for body in kinds {
        let kind = body.kind();
        json_format(
            &format!("request-{}", kind.replace('_', "-")),
            1,
            request(body),
            |read: &DeviceRequest| {
                assert_eq!(read.body.kind(), kind);
                assert_eq!(read.device_id, device());
            },
        );
    }
}

/// `iot.replies`.
#[test]
fn device_replies_read() {
    let reply = DeviceReply {
        request_id: "req-1".into(),
        reply_to: "instance-a".into(),
        status: ReplyStatus::Created,
        body: serde_json::to_value(command()).unwrap(),
    };
    json_format("reply", 1, reply, |read: &DeviceReply| {
        assert_eq!(read.status, ReplyStatus::Created);
        let command: CommandRecord = serde_json::from_value(read.body.clone()).unwrap();
        assert_eq!(command, self::command());
    });
}

/// `iot.alarms`.
#[test]
fn alarm_events_read() {
    let event = AlarmEvent {
        event_id: format!("{}:17/3", device()),
        kind: AlarmEventKind::Acknowledged,
        at_ms: T0 + 2_000,
        by: "alice".into(),
        alarm: alarm(),
    };
    json_format("alarm-event", 1, event, |read: &AlarmEvent| {
        assert_eq!(read.alarm, alarm());
        assert_eq!(read.kind, AlarmEventKind::Acknowledged);
    });
}

/// `iot.feedback`.
#[test]
fn feedback_reads() {
    let feedback = Feedback {
        device_id: device(),
        alarm_id: format!("{}:17", device()),
        verdict: Verdict::FalsePositive,
        cause: Some("pressure:deviation".into()),
        peak_score: 0.91,
        at_ms: T0 + 2_000,
        by: "alice".into(),
    };
    json_format("feedback", 1, feedback, |read: &Feedback| {
        assert_eq!(read.verdict, Verdict::FalsePositive);
        assert_eq!(read.cause.as_deref(), Some("pressure:deviation"));
    });
}

/// `iot.device-directory`.
#[test]
fn directory_entries_read() {
    let entry = DirectoryEntry {
        device_id: device(),
        tenant: Some(tenant()),
    };
    json_format("directory-entry", 1, entry, |read: &DirectoryEntry| {
        assert_eq!(read.tenant, Some(tenant()));
    });
}

/// `iot.telemetry` (replayed by every consuming role): each kind of device event.
#[test]
fn device_events_read() {
    let bodies = [
        (
            "telemetry",
            DeviceEventBody::Telemetry(TelemetryPayload {
                ts: T0,
                seq: 7,
                metrics: metrics_at(7),
            }),
        ),
        (
            "state",
            DeviceEventBody::State(fleetwatch_protocol::StatePayload {
                ts: Some(T0),
                reported: object(json!({"led": "red"})),
            }),
        ),
        (
            "status",
            DeviceEventBody::Status(fleetwatch_protocol::StatusPayload {
                status: Connectivity::Offline,
                ts: None,
            }),
        ),
        (
            "ack",
            DeviceEventBody::Ack(AckPayload {
                command_id: "cmd-1".into(),
                outcome: AckOutcome::Succeeded,
                message: Some("done".into()),
                ts: Some(T0),
            }),
        ),
        ("decommissioned", DeviceEventBody::Decommissioned),
    ];
    for (kind, body) in bodies {
        let event = DeviceEvent {
            device_id: device(),
            received_ms: T0 + 5,
            tenant: Some(tenant()),
            body,
        };
        json_format(&format!("event-{kind}"), 1, event, |read: &DeviceEvent| {
            assert_eq!(read.device_id, device());
            assert_eq!(read.tenant, Some(tenant()));
        });
    }
}

/// `iot.alerts`, `iot.scores` and `iot.dlq`.
#[test]
fn alerts_scores_and_dead_letters_read() {
    let alert = Alert {
        alert_id: format!("{}:17", device()),
        device_id: device(),
        tenant: Some(tenant()),
        state: AlertState::Raised,
        score: 0.91,
        threshold: 0.65,
        reason: "pressure 140.2 is far above its usual 101.0".into(),
        contributors: vec![Contributor {
            metric: "pressure".into(),
            value: 140.2,
            expected: 101.0,
            score: 0.91,
        }],
        cause: Some("pressure:deviation".into()),
        event_ts: T0,
        event_seq: 17,
        emitted_ms: T0 + 20,
        model_version: 42,
        model_id: None,
    };
    let shadow_alert = Alert {
        model_id: Some("cand-1".into()),
        ..alert.clone()
    };
    json_format("alert", 1, alert, |read: &Alert| {
        assert_eq!(read.state, AlertState::Raised);
        assert_eq!(read.contributors.len(), 1);
    });
    // On `iot.shadow-alerts`, and on `iot.alerts` from a promoted candidate.
    json_format("alert-of-model", 1, shadow_alert, |read: &Alert| {
        assert_eq!(read.model_id.as_deref(), Some("cand-1"));
    });
    let score = ScoreRecord {
        device_id: device(),
        ts: T0,
        seq: 17,
        score: 0.91,
        metrics: BTreeMap::from([("pressure".into(), 0.91), ("temp".into(), 0.0)]),
    };
    json_format("score", 1, score.clone(), |read: &ScoreRecord| {
        assert_eq!(read.seq, 17);
    });
    // What the scorer writes on `iot.scores`; a lone score (above) is what it wrote before
    // batches, and storage reads both.
    let batch = ScoreBatch {
        scores: vec![score],
    };
    json_format("score-batch", 1, batch, |read: &ScoreBatch| {
        assert_eq!(read.scores[0].seq, 17);
    });
    for name in ["score.v1.json", "score-batch.v1.json"] {
        let text = std::fs::read_to_string(golden_dir().join(name)).unwrap();
        let read: ScoresRecord = serde_json::from_str(&text).unwrap();
        assert_eq!(read.into_scores()[0].seq, 17, "{name} as storage reads it");
    }
    let letter = DeadLetter::new(
        "metric \"t\" is not a finite number".into(),
        "devices/golden-pump-7/telemetry",
        Some(device()),
        br#"{"ts":1750000000000,"seq":1,"metrics":{"t":1e999}}"#,
        T0,
    );
    json_format("dead-letter", 1, letter, |read: &DeadLetter| {
        assert_eq!(read.source, "mqtt");
        assert_eq!(read.device_id, Some(device()));
    });
}

/// `iot.jobs`: every kind of job event, with job specs of each kind of command.
#[test]
fn job_events_read() {
    use fleetwatch_protocol::{
        AbortCriteria, AbortDecision, Canary, CanaryFigures, ExecutionChange, ExecutionState,
        JobCommand, JobEvent, JobEventBody, JobSpec, Rollout,
    };
    let event = |body| JobEvent {
        job_id: "18f2a0c1d4e7".into(),
        at_ms: T0,
        body,
    };
    let spec = |command, continuous| JobSpec {
        job_id: "18f2a0c1d4e7".into(),
        tenant: None,
        tenants: vec![tenant()],
        created_by: "alice".into(),
        command,
        target: json!({"prefix": "golden-", "selector": "reported.firmware != \"2.1\""}),
        devices: vec![device()],
        rollout: Rollout {
            waves_percent: vec![1.0, 5.0, 25.0, 100.0],
            soak_ms: 60_000,
            max_per_minute: 600,
        },
        abort: AbortCriteria {
            failure_ratio: 0.2,
            min_finished: 10,
            canary: Some(Canary {
                min_updated: 5,
                ratio: 3.0,
                p_value: 0.01,
            }),
        },
        device_timeout_ms: 600_000,
        ttl_ms: 86_400_000,
        continuous,
    };
    let update = JobCommand::SoftwareUpdate {
        url: "https://updates.example.com/fw/2.1.bin".into(),
        version: "2.1".into(),
        checksum: "sha256:0f1e2d".into(),
    };
    let configuration = JobCommand::Configuration {
        desired: object(json!({"sampling_ms": 500, "led": null})),
    };
    let command = JobCommand::Command {
        name: "reboot".into(),
        args: json!({"delay_s": 5}),
    };
    let figures = CanaryFigures {
        updated_devices: 12,
        other_devices: 188,
        updated_alarms: 9,
        updated_device_hours: 1.5,
        other_alarms: 4,
        other_device_hours: 30.0,
        rate_ratio: Some(45.0),
        p_value: 1.2e-9,
        abort: true,
    };
    let samples = [
        (
            "job-event-created-update",
            event(JobEventBody::Created(Box::new(spec(update, false)))),
        ),
        (
            "job-event-created-configuration",
            event(JobEventBody::Created(Box::new(spec(configuration, true)))),
        ),
        (
            "job-event-created-command",
            event(JobEventBody::Created(Box::new(spec(command, false)))),
        ),
        (
            "job-event-wave-started",
            event(JobEventBody::WaveStarted {
                wave: 1,
                reach: 10,
                canary: Some(CanaryFigures {
                    abort: false,
                    ..figures.clone()
                }),
            }),
        ),
        (
            "job-event-wave-finished",
            event(JobEventBody::WaveFinished { wave: 1 }),
        ),
        (
            "job-event-executions",
            event(JobEventBody::Executions {
                changes: vec![ExecutionChange {
                    device_id: device(),
                    state: ExecutionState::TimedOut,
                    detail: Some("no outcome within 600000 ms".into()),
                }],
            }),
        ),
        (
            "job-event-targets-added",
            event(JobEventBody::TargetsAdded {
                devices: vec![device()],
            }),
        ),
        (
            "job-event-cancel-requested",
            event(JobEventBody::CancelRequested { by: "alice".into() }),
        ),
        (
            "job-event-aborted",
            event(JobEventBody::Aborted(AbortDecision::Canary {
                wave: 1,
                figures,
            })),
        ),
        ("job-event-finished", event(JobEventBody::Finished)),
    ];
    for (name, sample) in samples {
        let kind = sample.body.kind();
        json_format(name, 1, sample, |read: &JobEvent| {
            assert_eq!(read.body.kind(), kind);
            assert_eq!(read.job_id, "18f2a0c1d4e7");
        });
    }
}

/// `iot.webhook-deliveries`.
#[test]
fn webhook_deliveries_read() {
    use fleetwatch_protocol::{DeliveryOutcome, WebhookDelivery};
    let delivery = WebhookDelivery {
        event_id: format!("{}:17/3", device()),
        alarm_id: format!("{}:17", device()),
        device_id: device(),
        tenant: tenant(),
        webhook: "ops-pager".into(),
        outcome: DeliveryOutcome::Retrying,
        attempts: 2,
        status: Some(503),
        error: Some("503 Service Unavailable".into()),
        at_ms: T0,
        next_attempt_ms: Some(T0 + 4_000),
    };
    json_format("webhook-delivery", 1, delivery, |read: &WebhookDelivery| {
        assert_eq!(read.outcome, DeliveryOutcome::Retrying);
        assert_eq!(read.attempts, 2);
    });
}

/// `iot.schedules`.
#[test]
fn schedule_events_read() {
    use fleetwatch_protocol::{
        Occurrence, OccurrenceOutcome, ScheduleAction, ScheduleEvent, ScheduleEventBody,
        ScheduleSpec, ScheduleWhen,
    };
    let event = |body| ScheduleEvent {
        schedule_id: "19ac2f3b1e24a7c1".into(),
        at_ms: 1_764_140_400_000,
        body,
    };
    let spec = |action, when, ttl_ms| ScheduleSpec {
        schedule_id: "19ac2f3b1e24a7c1".into(),
        tenant: Some(tenant()),
        device_id: device(),
        action,
        when,
        grace_ms: 300_000,
        ttl_ms,
        revision: 2,
    };
    let command = ScheduleAction::Command {
        name: "heat".into(),
        args: serde_json::json!({"target_c": 21}),
    };
    let desired = ScheduleAction::Desired {
        desired: object(serde_json::json!({"lights": "on"})),
    };
    let cron = ScheduleWhen::Cron {
        cron: "0 6 * * 1-5".into(),
        time_zone: "Europe/Berlin".into(),
    };
    let fired = Occurrence {
        local: "2026-11-26T06:00".into(),
        due_ms: Some(1_764_133_200_000),
        outcome: OccurrenceOutcome::Fired,
        command_id: Some("sched-19ac2f3b1e24a7c1-1764133200000".into()),
        expires_ms: Some(1_764_219_600_000),
    };
    let skipped = |local: &str, due_ms, outcome| Occurrence {
        local: local.into(),
        due_ms,
        outcome,
        command_id: None,
        expires_ms: None,
    };
    let samples = [
        (
            "schedule-event-saved-command",
            event(ScheduleEventBody::Saved(Box::new(spec(
                command, cron, None,
            )))),
        ),
        (
            "schedule-event-saved-desired",
            event(ScheduleEventBody::Saved(Box::new(spec(
                desired,
                ScheduleWhen::At {
                    at_ms: 1_764_219_600_000,
                },
                Some(3_600_000),
            )))),
        ),
        (
            "schedule-event-occurrences",
            event(ScheduleEventBody::Occurrences {
                occurrences: vec![
                    skipped(
                        "2026-03-29T02:30",
                        None,
                        OccurrenceOutcome::NonexistentLocalTime,
                    ),
                    skipped(
                        "2026-11-24T06:00",
                        Some(1_763_960_400_000),
                        OccurrenceOutcome::Missed,
                    ),
                    skipped(
                        "2026-11-25T06:00",
                        Some(1_764_046_800_000),
                        OccurrenceOutcome::Expired,
                    ),
                    fired,
                ],
            }),
        ),
        (
            "schedule-event-deleted",
            event(ScheduleEventBody::Deleted { by: "alice".into() }),
        ),
        (
            "schedule-event-saved-job",
            event(ScheduleEventBody::Saved(Box::new(spec(
                ScheduleAction::Job {
                    command: fleetwatch_protocol::JobCommand::Command {
                        name: "reboot".into(),
                        args: serde_json::Value::Null,
                    },
                },
                ScheduleWhen::Cron {
                    cron: "0 3 * * *".into(),
                    time_zone: "UTC".into(),
                },
                None,
            )))),
        ),
    ];
    for (name, sample) in samples {
        let kind = sample.body.kind();
        json_format(name, 1, sample, |read: &ScheduleEvent| {
            assert_eq!(read.body.kind(), kind);
            assert_eq!(read.schedule_id, "19ac2f3b1e24a7c1");
        });
    }
}

/// `iot.rules` and `iot.rule-actions`.
#[test]
fn rule_events_and_actions_read() {
    use fleetwatch::rules::rule::{
        ActionOutcome, ActionRecord, Condition, RuleAction, RuleEvent, RuleEventBody, RuleSpec,
    };
    let spec = RuleSpec {
        rule_id: "19ac2f3b1e2fb3c2".into(),
        tenant: Some(tenant()),
        name: "safe mode on lasting critical alarms".into(),
        condition: Condition {
            severity: Some(Severity::Critical),
            active_for_ms: 10_000,
            device_prefix: Some("pump-".into()),
            selector: Some("reported.site == \"north\"".into()),
            metric: Some("temperature:level".into()),
        },
        action: RuleAction::Command {
            name: "safe_mode".into(),
            args: serde_json::Value::Null,
        },
        dry_run: false,
        revision: 1,
    };
    let event = |body| RuleEvent {
        rule_id: "19ac2f3b1e2fb3c2".into(),
        at_ms: 1_764_140_400_000,
        body,
    };
    let samples = [
        (
            "rule-event-saved",
            event(RuleEventBody::Saved(Box::new(spec.clone()))),
        ),
        (
            "rule-event-deleted",
            event(RuleEventBody::Deleted { by: "alice".into() }),
        ),
    ];
    for (name, sample) in samples {
        json_format(name, 1, sample, |read: &RuleEvent| {
            assert_eq!(read.rule_id, "19ac2f3b1e2fb3c2");
        });
    }
    let alarm_id = format!("{}:7", device());
    let action = |outcome, action, detail: Option<&str>| ActionRecord {
        action_id: spec.action_id(&alarm_id),
        rule_id: spec.rule_id.clone(),
        rule_revision: 1,
        tenant: Some(tenant()),
        alarm_id: alarm_id.clone(),
        severity: Severity::Critical,
        alarm_created_ms: 1_764_140_390_000,
        device_id: device(),
        action,
        outcome,
        detail: detail.map(str::to_owned),
        at_ms: 1_764_140_400_000,
    };
    let samples = [
        (
            "rule-action-performed",
            action(ActionOutcome::Performed, spec.action.clone(), None),
        ),
        (
            "rule-action-limited-job",
            action(
                ActionOutcome::Limited,
                RuleAction::Job {
                    command: fleetwatch_protocol::JobCommand::Configuration {
                        desired: object(json!({"mode": "safe"})),
                    },
                },
                Some("3 actions on this device within the last 3600000 ms; the limit is 3 (rules.max_actions_per_device)"),
            ),
        ),
        (
            "rule-action-dry-run-notify",
            action(
                ActionOutcome::DryRun,
                RuleAction::Notify {
                    message: Some("pump overheating".into()),
                },
                Some("would be performed: 0 actions on this device within the last 3600000 ms; the limit is 3 (rules.max_actions_per_device)"),
            ),
        ),
    ];
    for (name, sample) in samples {
        let outcome = sample.outcome;
        json_format(name, 1, sample, |read: &ActionRecord| {
            assert_eq!(read.outcome, outcome);
            assert_eq!(read.alarm_id, format!("{}:7", device()));
        });
    }
}
