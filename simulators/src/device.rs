//! How a simulated device answers the service: commands are acknowledged, carried out
//! (some fail, some take a while) and reported; desired state is applied and reported
//! back. Plain data and rules, driven by the fleet's connection loop.

use std::collections::{HashMap, HashSet, VecDeque};

use fleetwatch_protocol::{
    AckOutcome, AckPayload, CommandPayload, DesiredPayload, JsonObject, StatePayload,
};
use rand::Rng;

/// Final outcomes a device remembers, to answer a resent command again.
const REMEMBERED_OUTCOMES: usize = 256;

/// How commands go, fleet-wide.
#[derive(Clone, Copy, Debug)]
pub struct CommandBehaviour {
    pub failure_rate: f64,
    pub slow_rate: f64,
    pub slow_ms: u64,
}

/// What the device does with a command.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// Publish this acknowledgement now.
    Now(AckPayload),
    /// Publish this final acknowledgement after `delay_ms`.
    Later { delay_ms: u64, ack: AckPayload },
}

/// A device's command and desired-state memory.
#[derive(Debug, Default)]
pub struct DeviceBrain {
    pub reported: JsonObject,
    in_progress: HashSet<String>,
    outcomes: HashMap<String, AckPayload>,
    order: VecDeque<String>,
    /// Commands whose work started: each command id once, however often it was resent.
    pub started: u64,
}

fn ack(command_id: &str, outcome: AckOutcome, message: Option<String>, ts: i64) -> AckPayload {
    AckPayload {
        command_id: command_id.to_owned(),
        outcome,
        message,
        ts: Some(ts),
    }
}

impl DeviceBrain {
    pub fn new(reported: JsonObject) -> Self {
        Self {
            reported,
            ..Self::default()
        }
    }

    /// Answers to a command, in order. A command seen before (the service resends
    /// until it hears back) gets the same answers again, and is not run twice.
    pub fn on_command(
        &mut self,
        command: &CommandPayload,
        behaviour: CommandBehaviour,
        rng: &mut impl Rng,
        now_ms: i64,
    ) -> Vec<Answer> {
        let id = command.command_id.as_str();
        if let Some(outcome) = self.outcomes.get(id) {
            return vec![Answer::Now(outcome.clone())];
        }
        let received = Answer::Now(ack(id, AckOutcome::Received, None, now_ms));
        if !self.in_progress.insert(id.to_owned()) {
            return vec![received];
        }
        self.started += 1;
        let forced = command.args.get("simulate").and_then(|v| v.as_str());
        let fails = match forced {
            Some("fail") => true,
            Some("ok") | Some("slow") => false,
            _ => rng.random_bool(behaviour.failure_rate.clamp(0.0, 1.0)),
        };
        let slow = match forced {
            Some("slow") => true,
            Some(_) => false,
            None => rng.random_bool(behaviour.slow_rate.clamp(0.0, 1.0)),
        };
        let delay_ms = command
            .args
            .get("delay_ms")
            .and_then(|v| v.as_u64())
            .unwrap_or(if slow { behaviour.slow_ms } else { 0 });
        let outcome = if fails {
            ack(
                id,
                AckOutcome::Failed,
                Some(format!(
                    "simulated failure: {} did not complete",
                    command.name
                )),
                now_ms,
            )
        } else {
            ack(
                id,
                AckOutcome::Succeeded,
                Some(format!("{} done", command.name)),
                now_ms,
            )
        };
        if delay_ms == 0 {
            vec![received, Answer::Now(self.finish(outcome))]
        } else {
            vec![
                received,
                Answer::Later {
                    delay_ms,
                    ack: outcome,
                },
            ]
        }
    }

    /// A command's work is over: remember its outcome (to answer resends) and return it.
    pub fn finish(&mut self, outcome: AckPayload) -> AckPayload {
        self.in_progress.remove(&outcome.command_id);
        if self
            .outcomes
            .insert(outcome.command_id.clone(), outcome.clone())
            .is_none()
        {
            self.order.push_back(outcome.command_id.clone());
        }
        while self.order.len() > REMEMBERED_OUTCOMES {
            if let Some(old) = self.order.pop_front() {
                self.outcomes.remove(&old);
            }
        }
        outcome
    }

    /// Apply a delta (null removes a key) and report the whole new state.
    pub fn on_desired(&mut self, desired: DesiredPayload, now_ms: i64) -> StatePayload {
        for (key, value) in desired.delta {
            if value.is_null() {
                self.reported.remove(&key);
            } else {
                self.reported.insert(key, value);
            }
        }
        StatePayload {
            ts: Some(now_ms),
            reported: self.reported.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::SeedableRng;
    use serde_json::json;

    use super::*;

    const NEVER: CommandBehaviour = CommandBehaviour {
        failure_rate: 0.0,
        slow_rate: 0.0,
        slow_ms: 1000,
    };

    fn command(id: &str, args: serde_json::Value) -> CommandPayload {
        CommandPayload {
            command_id: id.into(),
            name: "reboot".into(),
            args,
            ts: 0,
        }
    }

    #[test]
    fn answers_received_then_the_outcome_and_repeats_it_for_resends() {
        let mut brain = DeviceBrain::default();
        let mut rng = StdRng::seed_from_u64(1);
        let answers = brain.on_command(&command("c1", json!({})), NEVER, &mut rng, 5);
        assert!(matches!(&answers[0], Answer::Now(a) if a.outcome == AckOutcome::Received));
        assert!(matches!(&answers[1], Answer::Now(a) if a.outcome == AckOutcome::Succeeded));
        let again = brain.on_command(&command("c1", json!({})), NEVER, &mut rng, 6);
        assert!(matches!(&again[..], [Answer::Now(a)] if a.outcome == AckOutcome::Succeeded));
        assert_eq!(brain.started, 1, "a resend is not a second execution");
    }

    #[test]
    fn args_force_failure_and_delay() {
        let mut brain = DeviceBrain::default();
        let mut rng = StdRng::seed_from_u64(1);
        let answers = brain.on_command(
            &command("c1", json!({"simulate": "fail", "delay_ms": 300})),
            NEVER,
            &mut rng,
            5,
        );
        let Answer::Later { delay_ms, ack } = &answers[1] else {
            panic!("{answers:?}")
        };
        assert_eq!((*delay_ms, ack.outcome), (300, AckOutcome::Failed));
        let resent = brain.on_command(&command("c1", json!({})), NEVER, &mut rng, 6);
        assert!(matches!(&resent[..], [Answer::Now(a)] if a.outcome == AckOutcome::Received));
    }

    #[test]
    fn desired_deltas_become_reported_state() {
        let mut brain = DeviceBrain::new(json!({"fan": "off"}).as_object().unwrap().clone());
        let state = brain.on_desired(
            DesiredPayload {
                version: 1,
                delta: json!({"fan": "on", "rate": 5}).as_object().unwrap().clone(),
                ts: 0,
            },
            9,
        );
        assert_eq!(json!(state.reported), json!({"fan": "on", "rate": 5}));
    }
}
