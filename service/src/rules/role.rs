//! The rules role as the process starts it: the whole-topic readers of `iot.rules`,
//! `iot.rule-actions`, `iot.alarms` and `iot.device-state` (every instance), and the
//! group member that owns partitions of `iot.rule-actions` and decides and acts for
//! their devices.

use std::sync::Arc;

use fleetwatch_protocol::Topic;

use super::owner::{ActionLogHandler, RuleAlarmsHandler, RuleLogHandler, RulesOwner};
use super::perform::{Performer, PerformerSetup};
use super::state::{ActiveAlarms, RulesIndex};
use super::RulesApi;
use crate::app::{holds_partitions, Launch, Membership, RoleSpec};
use crate::error::Result;
use crate::jobs::fleet::{FleetHandler, FleetView};
use crate::jobs::owner::Ownership;
use crate::kafka::{ConsumerRole, RoleConsumer, StartAt};
use crate::metrics::Metrics;

pub const ROLE: RoleSpec = RoleSpec {
    name: "rules",
    summary: "alarm rules per tenant: when an alarm meets a rule's condition (severity, how long active, device prefix or twin selector, metric), records the decision with the alarm before sending a command or creating a job (a notification is delivered by the webhooks role from that record); at most `rules.max_actions_per_device` per device per window, counted from the journal; dry run records only",
    consumes: &[Topic::Rules, Topic::RuleActions, Topic::Alarms, Topic::DeviceState],
    produces: &[Topic::Rules, Topic::RuleActions, Topic::Commands, Topic::Jobs],
    membership: Membership::Group("rules"),
    start,
    ready,
};

fn start(launch: &mut Launch<'_>) -> Result<()> {
    let settings = launch.settings;
    let kafka = &settings.kafka;
    let config = settings.rules.clone();
    let index = Arc::new(RulesIndex::new(&config));
    let alarms = Arc::new(ActiveAlarms::default());
    let fleet = Arc::new(FleetView::new(1));
    let topic = launch.topics.rule_actions();
    let marker_prefix = format!("{}{}/rules/", crate::kafka::MARKER_PREFIX, launch.instance);
    let metrics = launch.metrics.clone();
    let state = Readers {
        index: index.clone(),
        alarms: alarms.clone(),
        fleet: fleet.clone(),
    };
    state.start(launch, &marker_prefix);
    let ownership = Arc::new(Ownership::new(
        launch.producer.clone(),
        topic.clone(),
        marker_prefix,
    ));
    let group = RoleConsumer::subscribe(
        kafka,
        ConsumerRole::Rules,
        &kafka.group_id("rules"),
        &[&topic],
        StartAt::Latest,
        metrics.clone(),
        Some(ownership.clone()),
    )?;
    let performer = Performer::new(PerformerSetup {
        producer: launch.producer.clone(),
        commands_topic: launch.topics.commands(),
        jobs_topic: launch.topics.jobs(),
        jobs: &settings.jobs,
        ttl_ms: config.command_ttl_ms,
        metrics: metrics.clone(),
    });
    let owner = RulesOwner {
        ownership,
        index: index.clone(),
        alarms,
        fleet,
        directory: launch.directory.clone(),
        producer: launch.producer.clone(),
        actions_topic: topic,
        performer,
        config: config.clone(),
        metrics,
        taken: Default::default(),
    };
    launch.consume("rules", group, owner);
    launch.rule_actions.get_or_insert_with(|| index.clone());
    launch.rules = Some(Arc::new(RulesApi {
        index,
        producer: launch.producer.clone(),
        topic: launch.topics.rules(),
        config,
    }));
    Ok(())
}

/// What the role's whole-topic readers fill.
struct Readers {
    index: Arc<RulesIndex>,
    alarms: Arc<ActiveAlarms>,
    fleet: Arc<FleetView>,
}

impl Readers {
    /// Read `iot.rules`, `iot.rule-actions` (meeting markers of `marker_prefix`),
    /// `iot.alarms` and `iot.device-state` whole.
    fn start(&self, launch: &mut Launch<'_>, marker_prefix: &str) {
        let metrics = launch.metrics.clone();
        let topic = launch.topics.rule_actions();
        let (index, alarms, fleet) = (&self.index, &self.alarms, &self.fleet);
        let rules_log = RuleLogHandler {
            index: index.clone(),
            metrics: metrics.clone(),
        };
        let action_log = ActionLogHandler {
            index: index.clone(),
            marker_prefix: marker_prefix.to_owned(),
            metrics: metrics.clone(),
        };
        let alarm_log = RuleAlarmsHandler {
            alarms: alarms.clone(),
            metrics: metrics.clone(),
        };
        let twins = FleetHandler {
            fleet: fleet.clone(),
            metrics: metrics.clone(),
        };
        let (rules_topic, alarms_topic) = (launch.topics.rules(), launch.topics.alarms());
        let (index2, alarms2, fleet2) = (index.clone(), alarms.clone(), fleet.clone());
        launch.read_whole(
            "rules-log",
            ConsumerRole::RuleLog,
            rules_topic,
            rules_log,
            move |ends| index2.rules_loading.start(ends),
        );
        let index3 = index.clone();
        launch.read_whole(
            "rule-actions-log",
            ConsumerRole::RuleActionLog,
            topic,
            action_log,
            move |ends| index3.actions_loading.start(ends),
        );
        launch.read_whole(
            "rules-alarms",
            ConsumerRole::RuleAlarms,
            alarms_topic,
            alarm_log,
            move |ends| alarms2.loading.start(ends),
        );
        let state_topic = launch.topics.device_state();
        launch.read_whole(
            "rules-fleet",
            ConsumerRole::RulesFleet,
            state_topic,
            twins,
            move |ends| fleet2.start(ends),
        );
    }
}

/// For the alerts role (which answers `/alarms` behind a split deployment's Ingress):
/// every action of the journal, by alarm, for `GET /alarms/{id}/actions`.
pub fn read_actions(launch: &mut Launch<'_>) -> Arc<RulesIndex> {
    let index = Arc::new(RulesIndex::new(&launch.settings.rules));
    index.rules_loading.start(Default::default());
    let handler = ActionLogHandler {
        index: index.clone(),
        // This reader owns nothing: no marker is its.
        marker_prefix: format!("{}{}/alerts/", crate::kafka::MARKER_PREFIX, launch.instance),
        metrics: launch.metrics.clone(),
    };
    let (topic, started) = (launch.topics.rule_actions(), index.clone());
    launch.read_whole(
        "alerts-rule-actions",
        ConsumerRole::AlertsRuleActions,
        topic,
        handler,
        move |ends| started.actions_loading.start(ends),
    );
    index
}

fn ready(metrics: &Metrics) -> (bool, serde_json::Value) {
    holds_partitions(metrics, &["rules"])
}
