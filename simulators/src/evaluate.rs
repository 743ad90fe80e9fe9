//! Matching alerts to injected anomalies: what was caught, how fast, and what was noise.

use std::collections::BTreeMap;

use fleetwatch_protocol::AlertState;
use serde::Serialize;

use crate::{AnomalyKind, Injected, ReceivedAlert};

/// How a run went, as seen by a customer's WebSocket client.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Evaluation {
    pub anomalies_injected: usize,
    /// Injected anomalies with at least one raised alert for their device whose triggering
    /// event lies in the anomaly's window (extended by the grace period).
    pub anomalies_detected: usize,
    /// Raised alerts beyond the first for one anomaly: should be 0.
    pub duplicate_alerts: usize,
    /// Raised alerts matching no injected anomaly.
    pub false_alerts: usize,
    /// Device publish of the triggering event → alert received, over detected anomalies.
    pub latency_ms_p50: Option<i64>,
    pub latency_ms_p99: Option<i64>,
    pub latency_ms_max: Option<i64>,
    /// Per kind: (injected, detected).
    pub by_kind: BTreeMap<AnomalyKind, (usize, usize)>,
    /// Per injected anomaly: alerts matched to it (same order as the input).
    #[serde(skip)]
    pub matches: Vec<usize>,
    /// Per detected anomaly: its latency, ms (same order as detected anomalies).
    #[serde(skip)]
    pub latencies_ms: Vec<i64>,
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[i64], p: f64) -> Option<i64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

/// Match raised alerts to anomalies. An alert matches an anomaly of its device when its
/// triggering event's device time lies in `[start, end + grace_ms]`.
pub fn evaluate(injected: &[Injected], alerts: &[ReceivedAlert], grace_ms: i64) -> Evaluation {
    let raised: Vec<&ReceivedAlert> = alerts
        .iter()
        .filter(|received| received.alert.state == AlertState::Raised)
        .collect();
    let mut used = vec![false; raised.len()];
    let mut evaluation = Evaluation {
        anomalies_injected: injected.len(),
        ..Evaluation::default()
    };
    for anomaly in injected {
        let mut matched = 0;
        let mut first_latency = None;
        for (i, received) in raised.iter().enumerate() {
            let alert = &received.alert;
            if alert.device_id.as_str() == anomaly.device
                && (anomaly.start_ms..=anomaly.end_ms + grace_ms).contains(&alert.event_ts)
            {
                used[i] = true;
                matched += 1;
                first_latency.get_or_insert(received.received_ms - alert.event_ts);
            }
        }
        let entry = evaluation.by_kind.entry(anomaly.kind).or_default();
        entry.0 += 1;
        if let Some(latency) = first_latency {
            entry.1 += 1;
            evaluation.anomalies_detected += 1;
            evaluation.duplicate_alerts += matched - 1;
            evaluation.latencies_ms.push(latency);
        }
        evaluation.matches.push(matched);
    }
    evaluation.false_alerts = used.iter().filter(|&&u| !u).count();
    let mut sorted = evaluation.latencies_ms.clone();
    sorted.sort_unstable();
    evaluation.latency_ms_p50 = percentile(&sorted, 50.0);
    evaluation.latency_ms_p99 = percentile(&sorted, 99.0);
    evaluation.latency_ms_max = sorted.last().copied();
    evaluation
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
        }
    }

    fn raised(device: &str, event_ts: i64, received_ms: i64) -> ReceivedAlert {
        ReceivedAlert {
            alert: Alert {
                alert_id: format!("{device}:{event_ts}"),
                device_id: DeviceId::parse(device).unwrap(),
                state: AlertState::Raised,
                score: 1.0,
                threshold: 0.6,
                reason: String::new(),
                contributors: vec![],
                event_ts,
                event_seq: 1,
                emitted_ms: received_ms,
                model_version: 1,
            },
            received_ms,
        }
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
            raised("a", 1800, 1900), // duplicate for the same anomaly
            raised("b", 9000, 9100), // outside b's window: a false alert
            raised("c", 6500, 7000), // within grace
        ];
        let evaluation = evaluate(&injected, &alerts, 1000);
        assert_eq!(evaluation.anomalies_detected, 2);
        assert_eq!(evaluation.duplicate_alerts, 1);
        assert_eq!(evaluation.false_alerts, 1);
        assert_eq!(evaluation.matches, vec![2, 0, 1]);
        assert_eq!(evaluation.latencies_ms, vec![200, 500]);
        assert_eq!(evaluation.latency_ms_p50, Some(200));
        assert_eq!(evaluation.latency_ms_p99, Some(500));
    }
}
