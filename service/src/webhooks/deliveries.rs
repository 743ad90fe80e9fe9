//! The delivery status of every alarm, from `iot.webhook-deliveries`: read whole by
//! each instance serving `/alarms` (the alerts role), so `GET /alarms/{id}/deliveries`
//! answers on any of them, whichever instance delivered.

use std::collections::HashMap;
use std::sync::Arc;

use fleetwatch_protocol::{DeliveryOutcome, WebhookDelivery};
use parking_lot::RwLock;

use crate::kafka::{decode_record, HandleError, Record, RecordHandler};
use crate::metrics::Metrics;

/// Deliveries kept per alarm (each event to each webhook, latest attempt): the newest.
pub const KEPT_PER_ALARM: usize = 64;

/// Each alarm's deliveries: per event and webhook, the latest outcome.
#[derive(Default)]
pub struct DeliveryLog {
    by_alarm: RwLock<HashMap<String, Vec<WebhookDelivery>>>,
}

impl DeliveryLog {
    /// Fold in one outcome. A later attempt replaces an earlier one of the same event
    /// and webhook, but a retry never hides a delivery already made (a new owner of the
    /// partition may deliver again after a rebalance).
    pub fn apply(&self, delivery: WebhookDelivery) {
        let mut by_alarm = self.by_alarm.write();
        let deliveries = by_alarm.entry(delivery.alarm_id.clone()).or_default();
        let same = deliveries
            .iter()
            .position(|d| d.event_id == delivery.event_id && d.webhook == delivery.webhook);
        match same {
            Some(i)
                if deliveries[i].outcome == DeliveryOutcome::Delivered
                    && delivery.outcome != DeliveryOutcome::Delivered => {}
            Some(i) => deliveries[i] = delivery,
            None => {
                deliveries.push(delivery);
                if deliveries.len() > KEPT_PER_ALARM {
                    deliveries.remove(0);
                }
            }
        }
    }

    /// The deliveries of `alarm_id`, oldest event first.
    pub fn of(&self, alarm_id: &str) -> Vec<WebhookDelivery> {
        self.by_alarm
            .read()
            .get(alarm_id)
            .cloned()
            .unwrap_or_default()
    }
}

/// Reads `iot.webhook-deliveries` into a [`DeliveryLog`].
pub struct DeliveriesHandler {
    pub log: Arc<DeliveryLog>,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for DeliveriesHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        if let Some(delivery) = decode_record::<WebhookDelivery>(record, "alerts", &self.metrics) {
            self.log.apply(delivery);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use fleetwatch_protocol::{DeviceId, TenantId};

    use super::*;

    fn delivery(event: u32, outcome: DeliveryOutcome, attempts: u32) -> WebhookDelivery {
        WebhookDelivery {
            event_id: format!("dev-1:9/{event}"),
            alarm_id: "dev-1:9".into(),
            device_id: DeviceId::parse("dev-1").unwrap(),
            tenant: TenantId::parse("acme").unwrap(),
            webhook: "pager".into(),
            outcome,
            attempts,
            status: None,
            error: None,
            at_ms: 0,
            next_attempt_ms: None,
        }
    }

    #[test]
    fn the_latest_outcome_per_event_shows_and_a_retry_never_hides_a_delivery() {
        let log = DeliveryLog::default();
        log.apply(delivery(1, DeliveryOutcome::Retrying, 1));
        log.apply(delivery(1, DeliveryOutcome::Retrying, 2));
        log.apply(delivery(2, DeliveryOutcome::Retrying, 1));
        log.apply(delivery(1, DeliveryOutcome::Delivered, 3));
        // A new owner's retry of an event already delivered.
        log.apply(delivery(1, DeliveryOutcome::Retrying, 1));
        let shown: Vec<(String, DeliveryOutcome, u32)> = log
            .of("dev-1:9")
            .into_iter()
            .map(|d| (d.event_id, d.outcome, d.attempts))
            .collect();
        assert_eq!(
            shown,
            [
                ("dev-1:9/1".into(), DeliveryOutcome::Delivered, 3),
                ("dev-1:9/2".into(), DeliveryOutcome::Retrying, 1)
            ]
        );
        assert!(log.of("dev-2:1").is_empty());
    }
}
