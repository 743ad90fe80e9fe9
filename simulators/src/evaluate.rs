//! Matching alerts to injected anomalies: what was caught, how fast, and what was noise.

use std::collections::{BTreeMap, HashSet};
use std::ops::RangeInclusive;

use clap::ValueEnum;
use fleetwatch_protocol::AlertState;
use serde::Serialize;

use crate::{AnomalyKind, Injected, ReceivedAlert};

/// How a run went, as seen by a customer's WebSocket client.
///
/// Alerts are read by episode: every alert but a clear (a raise, or an `updated`
/// escalation of an open episode, or any later state that is not a clear) is a detection
/// signal of its episode, its `alert_id`, at its triggering event's device time. A signal
/// belongs to an anomaly of its device when that time lies in the anomaly's window:
/// `[start, end + grace]`, except for a drift, whose detections count from its first step
/// to the end of its hold, `[start, end)` (a signal in its grace period, on the snap-back,
/// is put down to the drift, so it is not a false alert, but it does not detect it).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Evaluation {
    pub anomalies_injected: usize,
    /// Injected anomalies with a detection signal in their window: a raise, or an
    /// escalation of an episode that was open already (a detection late in a drift counts).
    pub anomalies_detected: usize,
    /// Episodes beyond the first for one anomaly: should be 0. An episode's raise and its
    /// escalations are one.
    pub duplicate_alerts: usize,
    /// Episodes that opened outside every anomaly's window. One that opened early and
    /// then escalated in an anomaly's window counts here once, and detects that anomaly.
    pub false_alerts: usize,
    /// What the first few false alerts said (`device at event_ts: reason`, the
    /// triggering event's device time in ms, to look up in the ground truth; at most
    /// [`QUOTED_AT_MOST`]): the count alone does not tell a noisy model from a
    /// fault the simulator did not mean to make.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub false_alert_reasons: Vec<String>,
    /// The first few anomalies no alert detected (`device kind from start_ms to end_ms`,
    /// device times in ms; at most [`QUOTED_AT_MOST`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missed: Vec<String>,
    /// The same alert (id and event) received again: should be 0; not counted
    /// anywhere else.
    pub redelivered_alerts: usize,
    /// Device publish of the triggering event → alert received, over detected anomalies,
    /// for each one's earliest detection signal.
    pub latency_ms_p50: Option<i64>,
    pub latency_ms_p99: Option<i64>,
    pub latency_ms_max: Option<i64>,
    /// Per kind: (injected, detected).
    pub by_kind: BTreeMap<AnomalyKind, (usize, usize)>,
    /// Per injected anomaly: episodes put down to it (same order as the input).
    #[serde(skip)]
    pub matches: Vec<usize>,
    /// Per detected anomaly: its latency, ms (same order as detected anomalies).
    #[serde(skip)]
    pub latencies_ms: Vec<i64>,
}

/// How many false alerts and missed anomalies the summary quotes
/// ([`Evaluation::false_alert_reasons`], [`Evaluation::missed`]).
pub const QUOTED_AT_MOST: usize = 10;

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Device times of alerts that count for `anomaly`: (put down to it, detecting it).
fn windows(anomaly: &Injected, grace_ms: i64) -> (RangeInclusive<i64>, RangeInclusive<i64>) {
    let matching = anomaly.start_ms..=anomaly.end_ms + grace_ms;
    let detecting = match anomaly.kind {
        AnomalyKind::Drift => anomaly.start_ms..=anomaly.end_ms - 1,
        _ => matching.clone(),
    };
    (matching, detecting)
}

/// The detection signals among `alerts` (every state but a clear), in order of their
/// events' device time, without redeliveries; and how many redeliveries there were.
fn detection_signals(alerts: &[ReceivedAlert]) -> (Vec<&ReceivedAlert>, usize) {
    let mut seen = HashSet::new();
    let mut redelivered = 0;
    let mut signals: Vec<&ReceivedAlert> = Vec::new();
    for received in alerts {
        let alert = &received.alert;
        if alert.state == AlertState::Cleared {
            continue;
        }
        // A raise and an escalation are triggered by different events: an alert id and an
        // event make an alert.
        if !seen.insert((alert.alert_id.as_str(), alert.event_seq)) {
            redelivered += 1;
            continue;
        }
        signals.push(received);
    }
    signals.sort_by_key(|received| received.alert.event_ts);
    (signals, redelivered)
}

/// Match alerts to anomalies (see [`Evaluation`] for the rules): `grace_ms` is how long
/// after an anomaly's end a triggering event still counts for it.
pub fn evaluate(injected: &[Injected], alerts: &[ReceivedAlert], grace_ms: i64) -> Evaluation {
    let (signals, redelivered_alerts) = detection_signals(alerts);
    let mut evaluation = Evaluation {
        anomalies_injected: injected.len(),
        redelivered_alerts,
        ..Evaluation::default()
    };
    for anomaly in injected {
        let (matching, detecting) = windows(anomaly, grace_ms);
        let mut episodes = HashSet::new();
        let mut first_latency = None;
        for received in &signals {
            let alert = &received.alert;
            if alert.device_id.as_str() != anomaly.device || !matching.contains(&alert.event_ts) {
                continue;
            }
            episodes.insert(alert.alert_id.as_str());
            if detecting.contains(&alert.event_ts) {
                first_latency.get_or_insert(received.received_ms - alert.event_ts);
            }
        }
        let entry = evaluation.by_kind.entry(anomaly.kind).or_default();
        entry.0 += 1;
        if let Some(latency) = first_latency {
            entry.1 += 1;
            evaluation.anomalies_detected += 1;
            evaluation.duplicate_alerts += episodes.len() - 1;
            evaluation.latencies_ms.push(latency);
        } else if evaluation.missed.len() < QUOTED_AT_MOST {
            evaluation.missed.push(format!(
                "{} {} from {} to {}",
                anomaly.device,
                anomaly
                    .kind
                    .to_possible_value()
                    .map_or_else(String::new, |kind| kind.get_name().to_owned()),
                anomaly.start_ms,
                anomaly.end_ms
            ));
        }
        evaluation.matches.push(episodes.len());
    }
    let false_openings = false_episodes(injected, &signals, grace_ms);
    evaluation.false_alerts = false_openings.len();
    evaluation.false_alert_reasons = false_openings
        .iter()
        .take(QUOTED_AT_MOST)
        .map(|received| {
            let alert = &received.alert;
            format!(
                "{} at {}: {}",
                alert.device_id, alert.event_ts, alert.reason
            )
        })
        .collect();
    let mut sorted = evaluation.latencies_ms.clone();
    sorted.sort_unstable();
    evaluation.latency_ms_p50 = percentile(&sorted, 50.0);
    evaluation.latency_ms_p99 = percentile(&sorted, 99.0);
    evaluation.latency_ms_max = sorted.last().copied();
    evaluation
}

/// Episodes whose first signal (by device time) lies in no anomaly's window of its device.
fn false_episodes<'a>(
    injected: &[Injected],
    signals: &[&'a ReceivedAlert],
    grace_ms: i64,
) -> Vec<&'a ReceivedAlert> {
    let mut opened = HashSet::new();
    signals
        .iter()
        .copied()
        .filter(|received| opened.insert(received.alert.alert_id.as_str()))
        .filter(|received| {
            let alert = &received.alert;
            !injected.iter().any(|anomaly| {
                anomaly.device == alert.device_id.as_str()
                    && windows(anomaly, grace_ms).0.contains(&alert.event_ts)
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use fleetwatch_protocol::{Alert, DeviceId};

    use super::*;

    fn anomaly(device: &str, start_ms: i64, end_ms: i64) -> Injected {
        Injected {
            device: device.into(),
            kind: AnomalyKind::Spike,
            metric: Some("t".into()),
            magnitude_sigmas: 10.0,
            start_ms,
            end_ms,
            peak_ms: None,
        }
    }

    /// An alert of the episode `episode` (its opening event's time) of `device`, triggered
    /// by the event at `event_ts`.
    fn alert(device: &str, episode: i64, event_ts: i64, state: AlertState) -> ReceivedAlert {
        ReceivedAlert {
            alert: Alert {
                tenant: None,
                cause: None,
                alert_id: format!("{device}:{episode}"),
                device_id: DeviceId::parse(device).unwrap(),
                state,
                score: 1.0,
                threshold: 0.6,
                reason: format!("event at {event_ts}"),
                contributors: vec![],
                event_ts,
                event_seq: event_ts as u64,
                emitted_ms: event_ts + 100,
                model_version: 1,
                model_id: None,
            },
            received_ms: event_ts + 100,
        }
    }

    fn raised(device: &str, event_ts: i64, received_ms: i64) -> ReceivedAlert {
        let mut received = alert(device, event_ts, event_ts, AlertState::Raised);
        received.received_ms = received_ms;
        received
    }

    /// A later alert of an open episode. `updated` does not exist in the protocol yet; the
    /// evaluation reads every state but a clear alike, so a second non-clear alert of the
    /// same id stands for it.
    fn escalated(device: &str, episode: i64, event_ts: i64) -> ReceivedAlert {
        alert(device, episode, event_ts, AlertState::Raised)
    }

    #[test]
    fn matches_by_device_and_window() {
        let injected = [
            anomaly("a", 1000, 2000),
            anomaly("b", 1000, 2000),
            anomaly("c", 5000, 6000),
        ];
        let alerts = [
            raised("a", 1500, 1700),
            raised("a", 1800, 1900), // another episode for the same anomaly: a duplicate
            raised("b", 9000, 9100), // outside b's window: a false alert
            raised("c", 6500, 7000), // within grace
        ];
        let evaluation = evaluate(&injected, &alerts, 1000);
        assert_eq!(evaluation.anomalies_detected, 2);
        assert_eq!(evaluation.duplicate_alerts, 1);
        assert_eq!(evaluation.false_alerts, 1);
        assert_eq!(
            evaluation.false_alert_reasons,
            vec!["b at 9000: event at 9000"]
        );
        assert_eq!(evaluation.missed, vec!["b spike from 1000 to 2000"]);
        assert_eq!(evaluation.matches, vec![2, 0, 1]);
        assert_eq!(evaluation.latencies_ms, vec![200, 500]);
        assert_eq!(evaluation.latency_ms_p50, Some(200));
        assert_eq!(evaluation.latency_ms_p99, Some(500));
    }

    #[test]
    fn escalations_and_clears_of_a_counted_episode_are_neither_duplicate_nor_false() {
        let injected = [anomaly("a", 1000, 2000)];
        let alerts = [
            raised("a", 1200, 1300),
            escalated("a", 1200, 1700),
            // Still the same episode, after the window: not a false alert.
            escalated("a", 1200, 9000),
            alert("a", 1200, 9500, AlertState::Cleared),
        ];
        let evaluation = evaluate(&injected, &alerts, 1000);
        assert_eq!(evaluation.anomalies_detected, 1);
        assert_eq!(evaluation.duplicate_alerts, 0);
        assert_eq!(evaluation.false_alerts, 0);
        assert_eq!(evaluation.matches, vec![1]);
        assert_eq!(evaluation.latencies_ms, vec![100]);
    }

    #[test]
    fn an_escalation_inside_the_window_detects_an_anomaly_of_an_episode_opened_before() {
        let injected = [anomaly("a", 10_000, 20_000)];
        // A false alarm opens an episode; the anomaly then escalates it.
        let alerts = [raised("a", 4000, 4100), escalated("a", 4000, 15_000)];
        let evaluation = evaluate(&injected, &alerts, 1000);
        assert_eq!(evaluation.anomalies_detected, 1);
        assert_eq!(evaluation.false_alerts, 1, "the opening was a false alarm");
        assert_eq!(evaluation.duplicate_alerts, 0);
        assert_eq!(evaluation.latencies_ms, vec![100]);
    }

    #[test]
    fn a_drift_is_detected_late_in_its_ramp_or_hold_but_not_on_its_snap_back() {
        let drift = |device: &str| Injected {
            kind: AnomalyKind::Drift,
            magnitude_sigmas: 5.0,
            peak_ms: Some(60_000),
            ..anomaly(device, 10_000, 63_000)
        };
        let injected = [drift("a"), drift("b"), drift("c")];
        let alerts = [
            raised("a", 55_000, 55_100), // late in the ramp
            raised("b", 62_500, 62_600), // in the hold
            raised("c", 63_000, 63_100), // the snap-back: put down to it, not detecting
        ];
        let evaluation = evaluate(&injected, &alerts, 5000);
        assert_eq!(evaluation.matches, vec![1, 1, 1]);
        assert_eq!(evaluation.by_kind[&AnomalyKind::Drift], (3, 2));
        assert_eq!(evaluation.false_alerts, 0);
        assert_eq!(evaluation.duplicate_alerts, 0);
    }

    #[test]
    fn a_redelivered_alert_is_counted_apart() {
        let injected = [anomaly("a", 1000, 2000)];
        let alerts = [raised("a", 1500, 1600), raised("a", 1500, 1900)];
        let evaluation = evaluate(&injected, &alerts, 1000);
        assert_eq!(evaluation.redelivered_alerts, 1);
        assert_eq!(evaluation.duplicate_alerts, 0);
        assert_eq!(evaluation.false_alerts, 0);
        assert_eq!(evaluation.latencies_ms, vec![100]);
    }

    #[test]
    fn every_kind_has_its_row_in_the_by_kind_table() {
        let injected: Vec<Injected> = AnomalyKind::ALL
            .iter()
            .map(|&kind| Injected {
                kind,
                ..anomaly("a", 1000, 2000)
            })
            .collect();
        let evaluation = evaluate(&injected, &[], 1000);
        let json = serde_json::to_value(&evaluation).unwrap();
        for kind in [
            "spike",
            "level_shift",
            "drift",
            "stuck",
            "decorrelation",
            "dropout",
        ] {
            assert_eq!(json["by_kind"][kind], serde_json::json!([1, 0]), "{kind}");
        }
    }
}
