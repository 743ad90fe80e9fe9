//! Device ids and tenant ids (from MQTT topics, REST paths, tokens and Kafka keys), and
//! the device named in an alarm id.
#![no_main]

use fleetwatch_protocol::{Alarm, DeviceId, TenantId};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    if let Ok(id) = DeviceId::parse(&text) {
        assert_eq!(id.as_str(), text);
        let json = serde_json::to_string(&id).expect("ids serialize");
        assert_eq!(serde_json::from_str::<DeviceId>(&json).ok(), Some(id));
    }
    if let Ok(tenant) = TenantId::parse(&text) {
        assert_eq!(tenant.as_str(), text);
        let json = serde_json::to_string(&tenant).expect("ids serialize");
        assert_eq!(serde_json::from_str::<TenantId>(&json).ok(), Some(tenant));
    }
    let _ = Alarm::device_of(&text);
    // Ids inside JSON, as records carry them.
    let _ = serde_json::from_slice::<DeviceId>(data);
    let _ = serde_json::from_slice::<TenantId>(data);
});
