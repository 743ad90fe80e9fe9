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

/// The stages of a software update, reported as `reported.update.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UpdateStage {
    Downloading,
    Verifying,
    Installing,
    Done,
    Failed,
}

impl UpdateStage {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Downloading => "downloading",
            Self::Verifying => "verifying",
            Self::Installing => "installing",
            Self::Done => "done",
            Self::Failed => "failed",
        }
    }
}

/// A software update under way.
#[derive(Clone, Debug, PartialEq)]
pub struct UpdatePlan {
    pub command_id: String,
    pub version: String,
    /// Whether it fails at verification.
    pub fails: bool,
}

impl UpdatePlan {
    /// The stages it goes through, in order.
    pub fn stages(&self) -> Vec<UpdateStage> {
        use UpdateStage::*;
        if self.fails {
            vec![Downloading, Verifying, Failed]
        } else {
            vec![Downloading, Verifying, Installing, Done]
        }
    }
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

    /// A `software_update` command (args `url`, `version`, `checksum`): the answers
    /// now, and the update to carry out when it is new. Resends get the same answers as
    /// other commands and never start a second update.
    pub fn on_update(
        &mut self,
        command: &CommandPayload,
        failure_rate: f64,
        rng: &mut impl Rng,
        now_ms: i64,
    ) -> (Vec<Answer>, Option<UpdatePlan>) {
        let id = command.command_id.as_str();
        if let Some(outcome) = self.outcomes.get(id) {
            return (vec![Answer::Now(outcome.clone())], None);
        }
        let received = Answer::Now(ack(id, AckOutcome::Received, None, now_ms));
        if !self.in_progress.insert(id.to_owned()) {
            return (vec![received], None);
        }
        let Some(version) = command.args.get("version").and_then(|v| v.as_str()) else {
            let failed = ack(
                id,
                AckOutcome::Failed,
                Some("no version to install".into()),
                now_ms,
            );
            return (vec![received, Answer::Now(self.finish(failed))], None);
        };
        let fails = match command.args.get("simulate").and_then(|v| v.as_str()) {
            Some("fail") => true,
            Some(_) => false,
            None => rng.random_bool(failure_rate.clamp(0.0, 1.0)),
        };
        let plan = UpdatePlan {
            command_id: id.to_owned(),
            version: version.to_owned(),
            fails,
        };
        (vec![received], Some(plan))
    }

    /// The update reached `stage`: the state to report, and the final acknowledgement
    /// when it is over.
    pub fn update_stage(
        &mut self,
        plan: &UpdatePlan,
        stage: UpdateStage,
        now_ms: i64,
    ) -> (StatePayload, Option<AckPayload>) {
        let progress = serde_json::json!({"state": stage.as_str(), "version": plan.version});
        self.reported.insert("update".into(), progress);
        let outcome = match stage {
            UpdateStage::Done => {
                self.reported
                    .insert("firmware".into(), plan.version.clone().into());
                Some(ack(
                    &plan.command_id,
                    AckOutcome::Succeeded,
                    Some(format!("installed {}", plan.version)),
                    now_ms,
                ))
            }
            UpdateStage::Failed => Some(ack(
                &plan.command_id,
                AckOutcome::Failed,
                Some(format!(
                    "simulated failure: {} did not verify",
                    plan.version
                )),
                now_ms,
            )),
            _ => None,
        };
        let state = StatePayload {
            ts: Some(now_ms),
            reported: self.reported.clone(),
        };
        (state, outcome.map(|ack| self.finish(ack)))
    }

    /// The firmware the device runs.
    pub fn firmware(&self) -> Option<&str> {
        self.reported.get("firmware").and_then(|v| v.as_str())
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
    /// The mode commands: `safe_mode` (no args) puts the device in safe mode,
    /// `set_mode` with `{"mode": "…"}` in any mode; the device reports it as
    /// `reported.mode`. Called once per new command (not for resends): the state to
    /// report, when `command` is one of them.
    pub fn on_mode_command(
        &mut self,
        command: &CommandPayload,
        now_ms: i64,
    ) -> Option<StatePayload> {
        let mode = match command.name.as_str() {
            "safe_mode" => "safe",
            "set_mode" => command.args.get("mode")?.as_str()?,
            _ => return None,
        };
        self.reported.insert("mode".into(), mode.into());
        Some(StatePayload {
            ts: Some(now_ms),
            reported: self.reported.clone(),
        })
    }

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
    fn safe_mode_and_set_mode_are_reported_as_the_mode() {
        let mut brain = DeviceBrain::default();
        let mut safe = command("c1", json!({}));
        safe.name = "safe_mode".into();
        let state = brain.on_mode_command(&safe, 7).unwrap();
        assert_eq!(state.reported["mode"], "safe");
        let mut normal = command("c2", json!({"mode": "normal"}));
        normal.name = "set_mode".into();
        assert_eq!(
            brain.on_mode_command(&normal, 8).unwrap().reported["mode"],
            "normal"
        );
        assert!(brain
            .on_mode_command(&command("c3", json!({"mode": "x"})), 9)
            .is_none());
        normal.args = json!({"mode": 3});
        assert!(brain.on_mode_command(&normal, 9).is_none());
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
    fn an_update_reports_its_stages_and_its_version_once() {
        let mut brain = DeviceBrain::new(json!({"firmware": "1.0"}).as_object().unwrap().clone());
        let mut rng = StdRng::seed_from_u64(1);
        let mut update = command("u1", json!({"version": "2.0", "url": "x", "checksum": "y"}));
        update.name = "software_update".into();
        let (answers, plan) = brain.on_update(&update, 0.0, &mut rng, 5);
        assert!(matches!(&answers[..], [Answer::Now(a)] if a.outcome == AckOutcome::Received));
        let plan = plan.unwrap();
        // A resend while it runs starts nothing.
        assert!(brain.on_update(&update, 0.0, &mut rng, 6).1.is_none());
        let mut last = None;
        for stage in plan.stages() {
            let (state, outcome) = brain.update_stage(&plan, stage, 7);
            assert_eq!(state.reported["update"]["state"], stage.as_str());
            last = outcome;
        }
        assert_eq!(last.unwrap().outcome, AckOutcome::Succeeded);
        assert_eq!(brain.firmware(), Some("2.0"));
        let (again, none) = brain.on_update(&update, 0.0, &mut rng, 8);
        assert!(none.is_none());
        assert!(matches!(&again[..], [Answer::Now(a)] if a.outcome == AckOutcome::Succeeded));
        let (_, failing) = brain.on_update(
            &command("u2", json!({"version": "3", "simulate": "fail"})),
            0.0,
            &mut rng,
            9,
        );
        assert_eq!(failing.unwrap().stages().last(), Some(&UpdateStage::Failed));
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
