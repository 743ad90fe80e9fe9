//! A twin's alarms: the lifecycle of each anomaly episode as a person works with it.
//! Pure: the actor applies alerts and users' actions here and carries out the effects
//! (the twin write, the events on `iot.alarms`, a verdict for the trainer).
//!
//! The twin owner is the one writer of a device's alarms: it already owns the device's
//! partition of every co-partitioned topic (alerts included), applies them in order and
//! persists the result with the twin, so two instances never race on one alarm.

use fleetwatch_protocol::{
    AlarmAction, AlarmChange, AlarmEvent, AlarmEventKind, Alert, AlertState, Feedback, Severity,
    Verdict,
};

use super::twin::{Effects, Twin};

/// Alarms a twin keeps: every active one, and the most recent cleared ones up to this.
pub const KEPT_ALARMS: usize = 8;
/// Changes kept in an alarm's history: the first (its creation) and the latest.
const KEPT_CHANGES: usize = 32;
/// Who changes an alarm when its episode does.
pub const SCORER: &str = "scorer";

/// Severity from how far the peak score went past the threshold and how long the alarm
/// has lasted: a short blip is a warning, a strong or lasting fault escalates.
///
/// | severity | peak / threshold | or active for |
/// |---|---|---|
/// | critical | ≥ 1.4 | ≥ 10 min with a peak ≥ 1.2 × threshold |
/// | major | ≥ 1.2 | ≥ 2 min |
/// | minor | ≥ 1.05 | ≥ 30 s |
/// | warning | otherwise | |
pub fn severity(peak: f64, threshold: f64, lasted_ms: i64) -> Severity {
    let ratio = if threshold > 0.0 {
        peak / threshold
    } else {
        1.0
    };
    if ratio >= 1.4 || (ratio >= 1.2 && lasted_ms >= 600_000) {
        Severity::Critical
    } else if ratio >= 1.2 || lasted_ms >= 120_000 {
        Severity::Major
    } else if ratio >= 1.05 || lasted_ms >= 30_000 {
        Severity::Minor
    } else {
        Severity::Warning
    }
}

/// Why a user's action on an alarm was refused.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AlarmError {
    #[error(
        "device {device} has no alarm {alarm_id} (the twin keeps its {KEPT_ALARMS} most recent)"
    )]
    NotFound { device: String, alarm_id: String },
}

impl Twin {
    /// Fold a scorer alert into the device's alarms. Duplicates (a scorer that resends
    /// after a restart) change nothing.
    pub fn apply_alert(&mut self, alert: &Alert, at_ms: i64) -> Effects {
        let tenant = self.tenant.clone();
        let index = (self.alarms().iter()).position(|a| a.alarm_id == alert.alert_id);
        let change = match (index, alert.state) {
            (None, AlertState::Cleared) => return Effects::default(),
            (None, _) => {
                let device_id = self.device_id.clone();
                self.extras_mut().alarms.push(fleetwatch_protocol::Alarm {
                    alarm_id: alert.alert_id.clone(),
                    device_id,
                    tenant,
                    severity: severity(alert.score, alert.threshold, 0),
                    active: true,
                    acknowledged: false,
                    verdict: None,
                    created_ms: at_ms,
                    updated_ms: at_ms,
                    cleared_ms: None,
                    peak_score: alert.score,
                    threshold: alert.threshold,
                    reason: alert.reason.clone(),
                    cause: alert.cause.clone(),
                    count: 1,
                    last_alert_seq: alert.event_seq,
                    changes: 0,
                    history: Vec::new(),
                });
                AlarmEventKind::Created
            }
            (Some(i), _) => {
                let alarm = &mut self.extras_mut().alarms[i];
                if alert.event_seq <= alarm.last_alert_seq || !alarm.active {
                    // A duplicate, or an episode a user already cleared by hand.
                    return Effects::default();
                }
                alarm.last_alert_seq = alert.event_seq;
                alarm.count += 1;
                if alert.state == AlertState::Cleared {
                    alarm.active = false;
                    alarm.cleared_ms = Some(at_ms);
                    AlarmEventKind::Cleared
                } else {
                    alarm.peak_score = alarm.peak_score.max(alert.score);
                    alarm.reason = alert.reason.clone();
                    alarm.cause = alert.cause.clone().or(alarm.cause.take());
                    AlarmEventKind::Updated
                }
            }
        };
        let index = index.unwrap_or(self.alarms().len() - 1);
        // Closed because another model now decides for the device (docs/shadow.md).
        let detail = (change == AlarmEventKind::Cleared
            && alert.reason == fleetwatch_protocol::MODEL_PROMOTED)
            .then(|| alert.reason.clone());
        self.record(index, change, at_ms, SCORER, detail)
    }

    /// A user acknowledges (with an optional verdict) or clears an alarm. Repeating an
    /// action changes nothing. Returns the alarm as it is now.
    pub fn alarm_action(
        &mut self,
        alarm_id: &str,
        action: AlarmAction,
        by: &str,
        at_ms: i64,
    ) -> Result<(fleetwatch_protocol::Alarm, Effects), AlarmError> {
        let index = (self.alarms().iter())
            .position(|a| a.alarm_id == alarm_id)
            .ok_or_else(|| AlarmError::NotFound {
                device: self.device_id.to_string(),
                alarm_id: alarm_id.to_owned(),
            })?;
        let alarm = &mut self.extras_mut().alarms[index];
        let effects = match action {
            AlarmAction::Acknowledge { verdict }
                if !alarm.acknowledged || verdict != alarm.verdict =>
            {
                alarm.acknowledged = true;
                alarm.verdict = verdict.or(alarm.verdict);
                let detail = verdict.map(|v| format!("{v:?}").to_lowercase());
                let mut effects =
                    self.record(index, AlarmEventKind::Acknowledged, at_ms, by, detail);
                effects.feedback = verdict.map(|verdict| self.feedback(index, verdict, by, at_ms));
                effects
            }
            AlarmAction::Clear if alarm.active => {
                alarm.active = false;
                alarm.cleared_ms = Some(at_ms);
                self.record(index, AlarmEventKind::Cleared, at_ms, by, None)
            }
            _ => Effects::default(),
        };
        Ok((self.alarms()[index].clone(), effects))
    }

    fn feedback(&self, index: usize, verdict: Verdict, by: &str, at_ms: i64) -> Feedback {
        let alarm = &self.alarms()[index];
        Feedback {
            device_id: self.device_id.clone(),
            alarm_id: alarm.alarm_id.clone(),
            verdict,
            cause: alarm.cause.clone(),
            peak_score: alarm.peak_score,
            at_ms,
            by: by.to_owned(),
        }
    }

    /// Journal a change of alarm `index`: its history, severity and event; then keep
    /// only [`KEPT_ALARMS`] (active ones first).
    fn record(
        &mut self,
        index: usize,
        kind: AlarmEventKind,
        at_ms: i64,
        by: &str,
        detail: Option<String>,
    ) -> Effects {
        let alarm = &mut self.extras_mut().alarms[index];
        alarm.updated_ms = at_ms;
        let lasted = alarm.cleared_ms.unwrap_or(at_ms) - alarm.created_ms;
        alarm.severity = alarm
            .severity
            .max(severity(alarm.peak_score, alarm.threshold, lasted));
        alarm.history.push(AlarmChange {
            kind,
            at_ms,
            by: by.to_owned(),
            detail,
        });
        if alarm.history.len() > KEPT_CHANGES {
            alarm.history.remove(1);
        }
        alarm.changes += 1;
        let event = AlarmEvent {
            event_id: format!("{}/{}", alarm.alarm_id, alarm.changes),
            kind,
            at_ms,
            by: by.to_owned(),
            alarm: alarm.clone(),
        };
        self.version += 1;
        self.forget_old_alarms();
        let mut effects = Effects::persist();
        effects.alarm_events.push(event);
        effects
    }

    fn forget_old_alarms(&mut self) {
        let alarms = &mut self.extras_mut().alarms;
        while alarms.len() > KEPT_ALARMS {
            match alarms.iter().position(|a| !a.active) {
                Some(oldest_cleared) => {
                    alarms.remove(oldest_cleared);
                }
                None => break,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use fleetwatch_protocol::{DeviceId, TenantId};

    use super::*;

    fn alert(state: AlertState, seq: u64, score: f64) -> Alert {
        Alert {
            alert_id: "pump-1:100".into(),
            device_id: DeviceId::parse("pump-1").unwrap(),
            tenant: None,
            state,
            score,
            threshold: 0.65,
            reason: format!("reason at {seq}"),
            contributors: Vec::new(),
            cause: Some("pressure:deviation".into()),
            event_ts: 1_700_000_000_000,
            event_seq: seq,
            emitted_ms: 1_700_000_000_000,
            model_version: 1,
            model_id: None,
        }
    }

    fn twin() -> Twin {
        let mut twin = Twin::new(DeviceId::parse("pump-1").unwrap());
        twin.tenant = TenantId::parse("acme").ok();
        twin
    }

    fn kinds(effects: &Effects) -> Vec<AlarmEventKind> {
        effects.alarm_events.iter().map(|e| e.kind).collect()
    }

    #[test]
    fn an_episode_is_one_alarm_created_updated_and_cleared() {
        let mut twin = twin();
        let created = twin.apply_alert(&alert(AlertState::Raised, 100, 0.7), 1_000);
        assert_eq!(kinds(&created), [AlarmEventKind::Created]);
        assert!(created.persist);
        let event = &created.alarm_events[0];
        assert_eq!(event.event_id, "pump-1:100/1");
        assert_eq!(event.alarm.tenant.as_ref().unwrap().as_str(), "acme");
        assert_eq!(event.alarm.severity, Severity::Minor);
        // The same alert again (a scorer resending after a restart): nothing.
        assert_eq!(
            twin.apply_alert(&alert(AlertState::Raised, 100, 0.7), 1_100),
            Effects::default()
        );
        let updated = twin.apply_alert(&alert(AlertState::Updated, 120, 0.95), 2_000);
        assert_eq!(kinds(&updated), [AlarmEventKind::Updated]);
        let alarm = &updated.alarm_events[0].alarm;
        assert_eq!(
            (alarm.count, alarm.peak_score, alarm.severity),
            (2, 0.95, Severity::Critical)
        );
        assert_eq!(alarm.reason, "reason at 120");
        let cleared = twin.apply_alert(&alert(AlertState::Cleared, 150, 0.1), 3_000);
        assert_eq!(kinds(&cleared), [AlarmEventKind::Cleared]);
        let alarm = &cleared.alarm_events[0].alarm;
        assert!(!alarm.active && alarm.cleared_ms == Some(3_000));
        assert_eq!(alarm.history.len(), 3);
        assert!(alarm.history.iter().all(|change| change.by == SCORER));
        assert_eq!(twin.alarms().len(), 1);
    }

    #[test]
    fn users_acknowledge_with_a_verdict_and_clear_by_hand() {
        let mut twin = twin();
        twin.apply_alert(&alert(AlertState::Raised, 100, 0.7), 1_000);
        let verdict = Some(Verdict::FalsePositive);
        let (alarm, effects) = twin
            .alarm_action(
                "pump-1:100",
                AlarmAction::Acknowledge { verdict },
                "alice",
                1_500,
            )
            .unwrap();
        assert!(alarm.acknowledged && alarm.verdict == verdict);
        assert_eq!(kinds(&effects), [AlarmEventKind::Acknowledged]);
        let feedback = effects.feedback.expect("a verdict goes to the trainer");
        assert_eq!(feedback.cause.as_deref(), Some("pressure:deviation"));
        assert_eq!(feedback.by, "alice");
        // Acknowledging again changes nothing.
        let (_, again) = twin
            .alarm_action(
                "pump-1:100",
                AlarmAction::Acknowledge { verdict },
                "alice",
                1_600,
            )
            .unwrap();
        assert_eq!(again, Effects::default());
        let (alarm, cleared) = twin
            .alarm_action("pump-1:100", AlarmAction::Clear, "bob", 1_700)
            .unwrap();
        assert!(!alarm.active);
        assert_eq!(cleared.alarm_events[0].by, "bob");
        // The rest of the episode raises nothing on an alarm cleared by hand.
        assert_eq!(
            twin.apply_alert(&alert(AlertState::Updated, 130, 0.99), 1_800),
            Effects::default()
        );
        assert!(matches!(
            twin.alarm_action("pump-1:7", AlarmAction::Clear, "bob", 1_900),
            Err(AlarmError::NotFound { .. })
        ));
    }

    #[test]
    fn old_cleared_alarms_are_forgotten_and_severity_follows_the_table() {
        let mut twin = twin();
        for episode in 0..(KEPT_ALARMS as u64 + 3) {
            let mut raised = alert(AlertState::Raised, episode * 10, 0.7);
            raised.alert_id = format!("pump-1:{}", episode * 10);
            twin.apply_alert(&raised, 1_000);
            let mut cleared = alert(AlertState::Cleared, episode * 10 + 5, 0.1);
            cleared.alert_id = raised.alert_id;
            twin.apply_alert(&cleared, 2_000);
        }
        assert_eq!(twin.alarms().len(), KEPT_ALARMS);
        assert_eq!(twin.alarms()[0].alarm_id, "pump-1:30");
        assert_eq!(severity(0.66, 0.65, 0), Severity::Warning);
        assert_eq!(severity(0.66, 0.65, 40_000), Severity::Minor);
        assert_eq!(severity(0.66, 0.65, 150_000), Severity::Major);
        assert_eq!(severity(0.8, 0.65, 700_000), Severity::Critical);
        assert_eq!(severity(0.92, 0.65, 0), Severity::Critical);
    }
}
