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
pub struct SequenceTracker {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    highest: Option<u64>,
    /// Bit `i` set: `highest - i` was seen. Hex text on the wire: JSON readers
    /// commonly lose integers above 2^53.
    #[serde(default, with = "hex_u128")]
    seen: u128,
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
        let Some(highest) = self.highest else {
            self.restart(seq);
            return true;
        };
        if seq > highest {
            let shift = seq - highest;
            self.seen = if shift >= Self::WINDOW {
                0
            } else {
                self.seen << shift
            };
            self.seen |= 1;
            self.highest = Some(seq);
            return true;
        }
        let behind = highest - seq;
        if behind < Self::WINDOW {
            let bit = 1u128 << behind;
            let fresh = self.seen & bit == 0;
            self.seen |= bit;
            return fresh;
        }
        if seq < Self::WINDOW {
            self.restart(seq);
            return true;
        }
        false
    }

    fn restart(&mut self, seq: u64) {
        self.highest = Some(seq);
        self.seen = 1;
    }

    /// The highest sequence number accepted so far.
    pub fn highest(&self) -> Option<u64> {
        self.highest
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
}
