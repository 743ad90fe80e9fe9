use serde::{Deserialize, Serialize};

/// Drops duplicate telemetry by per-device sequence number.
///
/// MQTT QoS 1 and Kafka at-least-once both redeliver; a redelivered message carries the
/// sequence number it had. The tracker remembers the highest number seen and which of the
/// [`SequenceTracker::WINDOW`] numbers below it were seen, so late (reordered) messages
/// inside the window are still accepted once. A number further back than the window is a
/// duplicate — unless it is below [`SequenceTracker::WINDOW`] itself: devices count from 0
/// after a reboot, so that is a restart and tracking starts over.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "TrackerRecord", into = "TrackerRecord")]
pub struct SequenceTracker {
    /// The highest number accepted, once one was (`seen` is not 0).
    highest: u64,
    /// Bit `i` set: `highest - i` was seen (bit 0 once a number was accepted), as the low
    /// and high halves of a `u128`: a `u128` field would align the tracker, and the twin
    /// and model state around it, to 16 bytes (a tracker is kept per device and role).
    seen: [u64; 2],
}

/// [`SequenceTracker`] as written.
#[derive(Clone, Serialize, Deserialize)]
struct TrackerRecord {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    highest: Option<u64>,
    /// Hex text on the wire: JSON readers commonly lose integers above 2^53.
    #[serde(default, with = "hex_u128")]
    seen: u128,
}

impl From<TrackerRecord> for SequenceTracker {
    fn from(record: TrackerRecord) -> Self {
        let mut tracker = Self::default();
        if let Some(highest) = record.highest {
            // The highest number was accepted, whatever the record says.
            tracker.highest = highest;
            tracker.set_seen(record.seen | 1);
        }
        tracker
    }
}

impl From<SequenceTracker> for TrackerRecord {
    fn from(tracker: SequenceTracker) -> Self {
        Self {
            highest: tracker.highest(),
            seen: tracker.seen(),
        }
    }
}

mod hex_u128 {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(value: &u128, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&format!("{value:x}"))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<u128, D::Error> {
        let text = String::deserialize(deserializer)?;
        u128::from_str_radix(&text, 16).map_err(serde::de::Error::custom)
    }
}

impl SequenceTracker {
    pub const WINDOW: u64 = 128;

    /// Record `seq`; false when it is a duplicate.
    pub fn accept(&mut self, seq: u64) -> bool {
        let Some(highest) = self.highest() else {
            self.restart(seq);
            return true;
        };
        if seq > highest {
            let shift = seq - highest;
            let seen = if shift >= Self::WINDOW {
                0
            } else {
                self.seen() << shift
            };
            self.set_seen(seen | 1);
            self.highest = seq;
            return true;
        }
        let behind = highest - seq;
        if behind < Self::WINDOW {
            let bit = 1u128 << behind;
            let fresh = self.seen() & bit == 0;
            self.set_seen(self.seen() | bit);
            return fresh;
        }
        if seq < Self::WINDOW {
            self.restart(seq);
            return true;
        }
        false
    }

    fn restart(&mut self, seq: u64) {
        self.highest = seq;
        self.set_seen(1);
    }

    /// The highest sequence number accepted so far.
    pub fn highest(&self) -> Option<u64> {
        (self.seen != [0, 0]).then_some(self.highest)
    }

    fn seen(&self) -> u128 {
        let [low, high] = self.seen;
        u128::from(low) | (u128::from(high) << 64)
    }

    fn set_seen(&mut self, seen: u128) {
        self.seen = [seen as u64, (seen >> 64) as u64];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn survives_a_round_trip() {
        let mut tracker = SequenceTracker::default();
        for seq in [5, 7, 200] {
            tracker.accept(seq);
        }
        let json = serde_json::to_string(&tracker).unwrap();
        let mut restored: SequenceTracker = serde_json::from_str(&json).unwrap();
        assert_eq!(restored, tracker);
        assert!(!restored.accept(200));
    }

    #[test]
    fn drops_redeliveries_and_keeps_late_arrivals() {
        let mut tracker = SequenceTracker::default();
        assert!(tracker.accept(10));
        assert!(tracker.accept(12));
        assert!(!tracker.accept(12), "redelivery");
        assert!(tracker.accept(11), "late but new");
        assert!(!tracker.accept(11));
        assert!(!tracker.accept(10));
    }

    #[test]
    fn far_behind_is_a_duplicate_unless_the_device_restarted() {
        let mut tracker = SequenceTracker::default();
        for seq in 1000..1300 {
            assert!(tracker.accept(seq));
        }
        assert!(!tracker.accept(1000), "old duplicate");
        assert!(tracker.accept(0), "reboot");
        assert!(tracker.accept(1));
        assert_eq!(tracker.highest(), Some(1));
    }

    /// The record is what it was when the tracker held a `u128` beside an `Option`.
    #[test]
    fn written_as_before() {
        assert_eq!(std::mem::align_of::<SequenceTracker>(), 8);
        let empty = serde_json::to_string(&SequenceTracker::default()).unwrap();
        assert_eq!(empty, r#"{"seen":"0"}"#);
        let mut tracker = SequenceTracker::default();
        for seq in [70, 200, 199, 130] {
            tracker.accept(seq);
        }
        let json = serde_json::to_string(&tracker).unwrap();
        assert_eq!(json, r#"{"highest":200,"seen":"400000000000000003"}"#);
        // (Bit 70, in the high half: 130 is 70 behind 200.) A highest number with no bits
        // is read as accepted.
        let read: SequenceTracker = serde_json::from_str(r#"{"highest":9}"#).unwrap();
        assert_eq!(read.highest(), Some(9));
        assert!(!read.clone().accept(9));
    }
}
