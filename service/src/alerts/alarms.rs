//! Alarm events from `iot.alarms`: the index REST lists alarms from, the cursor that
//! lets a WebSocket client resume, and the handler that feeds both and pushes live
//! events to the clients.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use fleetwatch_protocol::{Alarm, AlarmEvent, Severity};
use parking_lot::{Mutex, RwLock};
use serde::Serialize;

use super::{AlertFrame, Routes};
use crate::auth::Caller;
use crate::kafka::{decode_record, HandleError, Record, RecordHandler};
use crate::metrics::Metrics;

/// A position in every partition of `iot.alarms`: the next offset to read in each. Sent
/// with every alarm event; a client that reconnects hands it back and receives exactly
/// the events after it. Opaque to clients; written `p:offset,p:offset,…`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cursor(BTreeMap<i32, i64>);

impl Cursor {
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = || format!("cursor {text:?} is not one this service handed out");
        let mut positions = BTreeMap::new();
        for pair in text.split(',').filter(|pair| !pair.is_empty()) {
            let (partition, offset) = pair.split_once(':').ok_or_else(bad)?;
            let partition: i32 = partition.parse().map_err(|_| bad())?;
            let offset: i64 = offset.parse().map_err(|_| bad())?;
            if partition < 0 || offset < 0 {
                return Err(bad());
            }
            positions.insert(partition, offset);
        }
        Ok(Self(positions))
    }

    pub fn encode(&self) -> String {
        let pairs: Vec<String> = self.0.iter().map(|(p, o)| format!("{p}:{o}")).collect();
        pairs.join(",")
    }

    /// Past the record at `offset` of `partition`.
    pub fn advance(&mut self, partition: i32, offset: i64) {
        let next = self.0.entry(partition).or_default();
        *next = (*next).max(offset + 1);
    }

    /// Whether the record at `offset` of `partition` is before this position.
    pub fn covers(&self, partition: i32, offset: i64) -> bool {
        self.0.get(&partition).is_some_and(|next| offset < *next)
    }

    pub fn positions(&self) -> HashMap<i32, i64> {
        self.0.iter().map(|(p, o)| (*p, *o)).collect()
    }

    /// The further of the two positions in every partition.
    pub fn merge(&mut self, other: &Cursor) {
        for (&partition, &offset) in &other.0 {
            let next = self.0.entry(partition).or_default();
            *next = (*next).max(offset);
        }
    }
}

/// Which alarms `GET /alarms` wants.
#[derive(Clone, Debug, Default)]
pub struct AlarmFilter {
    /// `Some(true)`: active only; `Some(false)`: cleared only.
    pub active: Option<bool>,
    pub severity: Option<Severity>,
    pub device_prefix: String,
    /// Created at or after / before (ms).
    pub from_ms: Option<i64>,
    pub to_ms: Option<i64>,
}

impl AlarmFilter {
    fn keeps(&self, alarm: &Alarm, caller: &Caller) -> bool {
        caller.sees(alarm.tenant.as_ref())
            && self.active.is_none_or(|active| alarm.active == active)
            && self
                .severity
                .is_none_or(|severity| alarm.severity == severity)
            && alarm.device_id.as_str().starts_with(&self.device_prefix)
            && self.from_ms.is_none_or(|from| alarm.created_ms >= from)
            && self.to_ms.is_none_or(|to| alarm.created_ms < to)
    }
}

/// Newest first: (created, id) descending is the listing order and the page cursor.
type Order = (std::cmp::Reverse<i64>, String);

/// Every alarm within the events topic's retention, as its latest event left it.
#[derive(Default)]
pub struct AlarmIndex {
    inner: RwLock<IndexInner>,
}

#[derive(Default)]
struct IndexInner {
    by_id: HashMap<String, Alarm>,
    order: BTreeSet<Order>,
}

/// One page of `GET /alarms`.
#[derive(Serialize)]
pub struct AlarmPage {
    pub alarms: Vec<Alarm>,
    /// For `?after=`: more may follow.
    pub next: Option<String>,
}

impl AlarmIndex {
    pub fn apply(&self, event: &AlarmEvent) {
        let alarm = &event.alarm;
        let mut inner = self.inner.write();
        if let Some(old) = inner.by_id.get(&alarm.alarm_id) {
            if old.changes > alarm.changes {
                return;
            }
        }
        inner
            .order
            .insert((std::cmp::Reverse(alarm.created_ms), alarm.alarm_id.clone()));
        inner.by_id.insert(alarm.alarm_id.clone(), alarm.clone());
    }

    pub fn get(&self, alarm_id: &str) -> Option<Alarm> {
        self.inner.read().by_id.get(alarm_id).cloned()
    }

    pub fn len(&self) -> usize {
        self.inner.read().by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Alarms `caller` may see that match `filter`, newest first, after the page cursor
    /// `after` (`created_ms/alarm_id` of the previous page's last alarm).
    pub fn page(
        &self,
        filter: &AlarmFilter,
        caller: &Caller,
        after: Option<&str>,
        limit: usize,
    ) -> Result<AlarmPage, String> {
        let start = match after {
            None => None,
            Some(after) => {
                let (created, id) = after
                    .split_once('/')
                    .and_then(|(created, id)| Some((created.parse::<i64>().ok()?, id)))
                    .ok_or_else(|| format!("after {after:?} is not a page cursor of this API"))?;
                Some((std::cmp::Reverse(created), id.to_owned()))
            }
        };
        let inner = self.inner.read();
        let range = match &start {
            Some(start) => inner.order.range((
                std::ops::Bound::Excluded(start.clone()),
                std::ops::Bound::Unbounded,
            )),
            None => inner.order.range(..),
        };
        let mut alarms: Vec<Alarm> = range
            .filter_map(|(_, id)| inner.by_id.get(id))
            .filter(|alarm| filter.keeps(alarm, caller))
            .take(limit + 1)
            .cloned()
            .collect();
        let next = (alarms.len() > limit).then(|| {
            alarms.truncate(limit);
            let last = alarms.last().expect("limit is positive");
            format!("{}/{}", last.created_ms, last.alarm_id)
        });
        Ok(AlarmPage { alarms, next })
    }
}

/// What the alarms reader shares with the WebSocket server: where the live stream is.
#[derive(Default)]
pub struct LivePosition {
    /// Past the last event read (every partition, from the first read on).
    pub cursor: Mutex<Cursor>,
    /// Partition → offset the reader must reach before its events are live (the topic's
    /// end at start; what came before is history, replayed on request only).
    pub history_ends: Mutex<HashMap<i32, i64>>,
}

impl LivePosition {
    /// Before the reader's first record: the topic's ends now, below which events are
    /// history.
    pub fn start(&self, history_ends: HashMap<i32, i64>) {
        let mut cursor = self.cursor.lock();
        for &partition in history_ends.keys() {
            cursor.0.entry(partition).or_insert(0);
        }
        *self.history_ends.lock() = history_ends
            .into_iter()
            .filter(|(_, end)| *end > 0)
            .collect();
    }

    pub(super) fn is_live(&self, partition: i32, offset: i64) -> bool {
        let mut ends = self.history_ends.lock();
        match ends.get(&partition) {
            Some(end) if offset + 1 < *end => false,
            Some(_) => {
                ends.remove(&partition);
                false
            }
            None => true,
        }
    }
}

/// The frame of one alarm event: `{"type":"alarm","event":{…},"cursor":"…"}`.
pub fn alarm_frame(event: &AlarmEvent, cursor: &Cursor) -> String {
    serde_json::json!({ "type": "alarm", "event": event, "cursor": cursor.encode() }).to_string()
}

/// Reads `iot.alarms` (every partition, from the beginning): keeps the index, and pushes
/// each event that happens from now on to the clients allowed to see it.
pub struct AlarmsHandler {
    pub index: Arc<AlarmIndex>,
    pub routes: Arc<Routes>,
    pub live: Arc<LivePosition>,
    pub metrics: Arc<Metrics>,
}

impl RecordHandler for AlarmsHandler {
    async fn handle(&mut self, record: &Record<'_>) -> Result<(), HandleError> {
        let live = self.live.is_live(record.partition, record.offset);
        let cursor = {
            let mut cursor = self.live.cursor.lock();
            cursor.advance(record.partition, record.offset);
            cursor.clone()
        };
        let Some(event) = decode_record::<AlarmEvent>(record, "alerts", &self.metrics) else {
            return Ok(());
        };
        self.index.apply(&event);
        if live {
            let text: Arc<str> = alarm_frame(&event, &cursor).into();
            self.routes.publish(AlertFrame {
                device_id: Some(event.alarm.device_id.clone()),
                tenant: event.alarm.tenant.clone(),
                text: text.clone(),
                recent_text: text,
                position: Some((record.partition, record.offset)),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let mut cursor = Cursor::parse("0:15,1:7").unwrap();
        cursor.advance(1, 9);
        cursor.advance(2, 0);
        assert_eq!(cursor.encode(), "0:15,1:10,2:1");
        assert!(cursor.covers(1, 9) && !cursor.covers(1, 10) && !cursor.covers(3, 0));
        assert!(Cursor::parse("0:x").is_err());
        assert!(Cursor::parse("-1:3").is_err());
        assert_eq!(Cursor::parse("").unwrap(), Cursor::default());
    }
}
