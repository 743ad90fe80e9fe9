//! The backfill's report: candidate against baseline, alerts matched per device by
//! overlapping episodes, new and vanished alerts, and how each fares on the verdicts
//! operators gave in the range. Everything opened in the warm-up is left out.

use std::collections::{BTreeMap, HashMap};

use fleetwatch_protocol::{AlarmEvent, Verdict};
use serde::Serialize;

use super::models::Alert;
use super::source::{Reading, SourceCounts};

/// The whole report (the JSON file).
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub from_ms: i64,
    pub to_ms: i64,
    /// Figures count from here (the end of the warm-up).
    pub counted_from_ms: i64,
    pub source: SourceCounts,
    /// Readings replayed (after duplicates were dropped), and the duplicates.
    pub events: u64,
    pub duplicates: u64,
    pub devices: usize,
    /// Wall time of the run (reading and replaying) and events per second over it.
    pub seconds: f64,
    pub events_per_second: f64,
    pub baseline: Totals,
    pub candidate: Totals,
    /// Candidate alerts that overlap a baseline alert of the same device.
    pub matched: u64,
    /// Candidate alerts that overlap none of the baseline's.
    pub new: u64,
    /// Baseline alerts that overlap none of the candidate's.
    pub vanished: u64,
    pub verdicts: Verdicts,
    /// Per device with an alert in either: the alerts and what became of them.
    pub per_device: BTreeMap<String, DeviceComparison>,
}

/// One configuration's counts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Totals {
    pub alerts: u64,
    pub devices_alerted: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct DeviceComparison {
    pub baseline: Vec<Alert>,
    pub candidate: Vec<Alert>,
    /// (baseline index, candidate index) of overlapping alerts.
    pub matched: Vec<(usize, usize)>,
    /// Indices of candidate alerts that overlap no baseline alert.
    pub new: Vec<usize>,
    /// Indices of baseline alerts that overlap no candidate alert.
    pub vanished: Vec<usize>,
}

/// How baseline and candidate fare on operators' verdicts.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Verdicts {
    /// Alarms judged real: how many, and how many each configuration alerts on.
    pub true_positive: VerdictFigures,
    /// Alarms judged false: how many, and how many each configuration still alerts on.
    pub false_positive: VerdictFigures,
    /// Every verdict counted, by alarm id.
    pub alarms: Vec<JudgedAlarm>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct VerdictFigures {
    pub alarms: u64,
    pub baseline_alerted: u64,
    pub candidate_alerted: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JudgedAlarm {
    pub alarm_id: String,
    pub device: String,
    pub verdict: Verdict,
    /// The alarm's readings: its opening one to the last alert folded into it.
    pub first_seq: u64,
    pub last_seq: u64,
    pub baseline_alerted: bool,
    pub candidate_alerted: bool,
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// Match one device's alerts (both already without the warm-up's).
pub fn compare(baseline: Vec<Alert>, candidate: Vec<Alert>) -> DeviceComparison {
    let mut comparison = DeviceComparison::default();
    for (i, b) in baseline.iter().enumerate() {
        for (j, c) in candidate.iter().enumerate() {
            if overlaps(b.span(), c.span()) {
                comparison.matched.push((i, j));
            }
        }
    }
    comparison.new = (0..candidate.len())
        .filter(|j| !comparison.matched.iter().any(|m| m.1 == *j))
        .collect();
    comparison.vanished = (0..baseline.len())
        .filter(|i| !comparison.matched.iter().any(|m| m.0 == *i))
        .collect();
    comparison.baseline = baseline;
    comparison.candidate = candidate;
    comparison
}

/// Verdicts by alarm id: (device, opening seq, last alert seq, verdict).
pub type VerdictsById = BTreeMap<String, (String, u64, u64, Verdict)>;

/// The latest verdict of each alarm among `events` (records of `iot.alarms`), by alarm
/// id: (device, opening seq, last alert seq, verdict).
pub fn latest_verdicts(events: &[AlarmEvent]) -> VerdictsById {
    let mut verdicts = BTreeMap::new();
    for event in events {
        let alarm = &event.alarm;
        let Some(verdict) = alarm.verdict else {
            continue;
        };
        let Some(opened) = (alarm.alarm_id.rsplit_once(':')).and_then(|(_, s)| s.parse().ok())
        else {
            continue;
        };
        let device = alarm.device_id.as_str().to_owned();
        let last = alarm.last_alert_seq.max(opened);
        verdicts.insert(alarm.alarm_id.clone(), (device, opened, last, verdict));
    }
    verdicts
}

/// The record time of every reading by (device, seq); of equal ones, the last.
pub fn reading_times(devices: &BTreeMap<String, Vec<Reading>>) -> HashMap<(&str, u64), i64> {
    devices
        .iter()
        .flat_map(|(d, rs)| rs.iter().map(move |r| ((d.as_str(), r.seq), r.record_ms)))
        .collect()
}

/// Score both configurations on the verdicts whose alarm opened on a reading of the
/// counted part of the range; `opened_ms` gives a replayed reading's record time by
/// (device, seq).
pub fn score_verdicts(
    verdicts: &VerdictsById,
    opened_ms: &dyn Fn(&str, u64) -> Option<i64>,
    per_device: &BTreeMap<String, DeviceComparison>,
    counted_from_ms: i64,
) -> Verdicts {
    let mut figures = Verdicts::default();
    for (alarm_id, (device, first, last, verdict)) in verdicts {
        let Some(opened_ms) = opened_ms(device, *first) else {
            continue;
        };
        if opened_ms < counted_from_ms {
            continue;
        }
        let empty = DeviceComparison::default();
        let comparison = per_device.get(device).unwrap_or(&empty);
        let alerted = |alerts: &[Alert]| alerts.iter().any(|a| overlaps(a.span(), (*first, *last)));
        let judged = JudgedAlarm {
            alarm_id: alarm_id.clone(),
            device: device.clone(),
            verdict: *verdict,
            first_seq: *first,
            last_seq: *last,
            baseline_alerted: alerted(&comparison.baseline),
            candidate_alerted: alerted(&comparison.candidate),
        };
        let bucket = match verdict {
            Verdict::TruePositive => &mut figures.true_positive,
            Verdict::FalsePositive => &mut figures.false_positive,
        };
        bucket.alarms += 1;
        bucket.baseline_alerted += u64::from(judged.baseline_alerted);
        bucket.candidate_alerted += u64::from(judged.candidate_alerted);
        figures.alarms.push(judged);
    }
    figures
}

impl Report {
    /// Fill the totals from the per-device comparisons.
    pub fn count(&mut self) {
        let (mut matched, mut new, mut vanished) = (0, 0, 0);
        self.baseline = Totals::default();
        self.candidate = Totals::default();
        for comparison in self.per_device.values() {
            for (totals, alerts) in [
                (&mut self.baseline, &comparison.baseline),
                (&mut self.candidate, &comparison.candidate),
            ] {
                totals.alerts += alerts.len() as u64;
                totals.devices_alerted += u64::from(!alerts.is_empty());
            }
            let candidates_matched = (0..comparison.candidate.len())
                .filter(|j| comparison.matched.iter().any(|m| m.1 == *j))
                .count();
            matched += candidates_matched as u64;
            new += comparison.new.len() as u64;
            vanished += comparison.vanished.len() as u64;
        }
        (self.matched, self.new, self.vanished) = (matched, new, vanished);
    }

    /// The short table for the terminal.
    pub fn table(&self) -> String {
        let v = &self.verdicts;
        let row = |name: &str, totals: &Totals, tp: u64, fp: u64, extra: String| {
            format!(
                "{name:<10} {:>7} {:>8} {:>16} {:>17}   {extra}\n",
                totals.alerts,
                totals.devices_alerted,
                format!("{tp}/{}", v.true_positive.alarms),
                format!("{fp}/{}", v.false_positive.alarms),
            )
        };
        let mut text = format!(
            "{} events of {} devices in {:.1} s ({:.0} events/s)\n{:<10} {:>7} {:>8} {:>16} {:>17}\n",
            self.events,
            self.devices,
            self.seconds,
            self.events_per_second,
            "",
            "alerts",
            "devices",
            "true alarms hit",
            "false alarms hit",
        );
        text += &row(
            "baseline",
            &self.baseline,
            v.true_positive.baseline_alerted,
            v.false_positive.baseline_alerted,
            String::new(),
        );
        text += &row(
            "candidate",
            &self.candidate,
            v.true_positive.candidate_alerted,
            v.false_positive.candidate_alerted,
            format!(
                "matched {}, new {}, vanished {}",
                self.matched, self.new, self.vanished
            ),
        );
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alert(opened: u64, closed: Option<u64>) -> Alert {
        Alert {
            opened_seq: opened,
            closed_seq: closed,
            opened_ms: opened as i64,
            closed_ms: closed.map(|c| c as i64),
            peak: 0.9,
        }
    }

    #[test]
    fn overlapping_alerts_match_and_the_rest_are_new_or_vanished() {
        let comparison = compare(
            vec![alert(10, Some(40)), alert(100, Some(130))],
            vec![alert(35, Some(70)), alert(200, None)],
        );
        assert_eq!(comparison.matched, [(0, 0)]);
        assert_eq!(comparison.new, [1]);
        assert_eq!(comparison.vanished, [1]);
    }

    #[test]
    fn an_open_alert_reaches_the_end_of_the_range() {
        let comparison = compare(vec![alert(500, Some(530))], vec![alert(400, None)]);
        assert_eq!(comparison.matched, [(0, 0)]);
    }
}
