//! The demo's embedded MQTT broker (rumqttd), one per process: v3.1.1 for the simulated
//! devices and v5 for ingest, on free loopback ports.

use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use crate::error::{Error, Result};

pub struct EmbeddedBroker {
    pub v4: SocketAddr,
    pub v5: SocketAddr,
}

fn free_port() -> Result<u16> {
    let probe =
        TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("finding a free port", e))?;
    Ok(probe
        .local_addr()
        .map_err(|e| Error::io("finding a free port", e))?
        .port())
}

/// Start rumqttd on its own thread and wait until it accepts connections.
pub fn start(max_payload_bytes: u32) -> Result<EmbeddedBroker> {
    let (v4_port, v5_port) = (free_port()?, free_port()?);
    let config_text = format!(
        r#"
id = 0
[router]
id = 0
max_connections = 100000
max_outgoing_packet_count = 2000
max_segment_size = 104857600
max_segment_count = 10

[v4.1]
name = "devices-v4"
listen = "127.0.0.1:{v4_port}"
next_connection_delay_ms = 0
[v4.1.connections]
connection_timeout_ms = 60000
max_payload_size = {max_payload_bytes}
max_inflight_count = 100
dynamic_filters = true

[v5.1]
name = "service-v5"
listen = "127.0.0.1:{v5_port}"
next_connection_delay_ms = 0
[v5.1.connections]
connection_timeout_ms = 60000
max_payload_size = {max_payload_bytes}
max_inflight_count = 1000
dynamic_filters = true
"#
    );
    let config: rumqttd::Config = toml::from_str(&config_text)
        .map_err(|e| Error::Config(format!("embedded broker configuration: {e}")))?;
    std::thread::Builder::new()
        .name("rumqttd".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(error) = broker.start() {
                tracing::error!(%error, "embedded MQTT broker stopped");
            }
        })
        .map_err(|e| Error::io("starting embedded MQTT broker", e))?;
    let broker = EmbeddedBroker {
        v4: SocketAddr::from(([127, 0, 0, 1], v4_port)),
        v5: SocketAddr::from(([127, 0, 0, 1], v5_port)),
    };
    // Not probed with a TCP connection: rumqttd logs every half-open connection as an
    // error. Clients reconnect until it listens, which takes milliseconds.
    std::thread::sleep(Duration::from_millis(200));
    Ok(broker)
}
