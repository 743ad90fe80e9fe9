//! Devices' MQTT credentials on the broker: Mosquitto's dynamic security plugin,
//! administered over MQTT on `$CONTROL/dynamic-security/v1` with JSON commands.
//!
//! Each device gets a broker client named after it (its MQTT user name) and a role of its
//! own, `fleetwatch-device-{id}`, which may publish only its upstream topics
//! (`devices/{id}/telemetry|state|status|acks`) and subscribe only to its downstream
//! ones (`devices/{id}/commands|desired`). Everything else stays denied by the plugin's
//! default access (publish and subscribe denied). Deleting the client disconnects the
//! device and refuses it from then on.
//!
//! Where the state lives: in the plugin's own JSON file, which the broker rewrites on
//! every change and reads at start, so provisioning survives restarts of the broker; the
//! service keeps nothing (any instance can apply a change, none has to be the device's
//! owner), so it survives restarts of the service. Passwords are shown once, in the
//! answer to the operator, and stored nowhere but as the plugin's salted hash.
//!
//! Each change is one short administrative connection: connect, subscribe to the answers,
//! send the commands, wait for their answers (matched by correlation data), disconnect.
//! Changes are rare (an operator's action), so a connection per change costs little and
//! leaves nothing to keep alive; at most `max_concurrent` run at once.

mod config;

pub use config::CredentialsConfig;

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fleetwatch_protocol::{DeviceId, DeviceTopic, DeviceTopicKind};
use rand::distr::{Alphanumeric, SampleString};
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, EventLoop};
use serde_json::{json, Value};
use tokio::sync::Semaphore;

use crate::mqtt::MqttConfig;
use crate::secret::Secret;

/// How a device proves who it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialKind {
    /// A generated password, returned once.
    Password,
    /// A client certificate whose identity (subject CN) is the device id, on a listener
    /// with `require_certificate true` and `use_identity_as_username true`.
    Certificate,
}

/// What a device connects with.
#[derive(Debug)]
pub struct Issued {
    pub username: String,
    pub password: Option<Secret>,
}

#[derive(Debug, thiserror::Error)]
pub enum CredentialsError {
    #[error("credential provisioning is off (credentials.enabled = false)")]
    Disabled,
    #[error("too many credential changes in progress; retry shortly")]
    Busy,
    #[error("the broker did not answer within {0:?}")]
    Timeout(Duration),
    #[error("broker connection: {0}")]
    Connection(String),
    #[error("the device already has credentials; revoke them first")]
    Exists,
    #[error("the device has no credentials")]
    NotFound,
    #[error("the broker refused the change: {0}")]
    Refused(String),
}

/// Applies credential changes to the broker.
pub struct Provisioner {
    config: CredentialsConfig,
    /// The broker, TLS and client-id settings, with the administrator's account.
    admin: MqttConfig,
    slots: Semaphore,
    sequence: AtomicU64,
}

/// The name of a device's role.
pub fn role_name(device: &DeviceId) -> String {
    format!("fleetwatch-device-{device}")
}

/// The role's ACLs: publish upstream kinds, subscribe to downstream kinds, of `device`
/// only.
pub fn device_acls(device: &DeviceId) -> Vec<Value> {
    DeviceTopicKind::ALL
        .into_iter()
        .map(|kind| {
            let acltype = if kind.is_upstream() {
                "publishClientSend"
            } else {
                "subscribeLiteral"
            };
            let topic = DeviceTopic::new(device.clone(), kind).to_string();
            json!({ "acltype": acltype, "topic": topic, "priority": 0, "allow": true })
        })
        .collect()
}

/// The commands that provision `device`: its role, then its client holding the role.
pub fn provision_commands(device: &DeviceId, password: Option<&Secret>) -> Vec<Value> {
    let role = role_name(device);
    let mut client = json!({
        "command": "createClient",
        "username": device.as_str(),
        "textname": "fleetwatch device",
        "roles": [{ "rolename": role, "priority": 0 }],
    });
    if let Some(password) = password {
        client["password"] = json!(password.expose());
    }
    vec![
        json!({
            "command": "createRole",
            "rolename": role,
            "textname": "fleetwatch device: its own topics only",
            "acls": device_acls(device),
        }),
        client,
    ]
}

/// The commands that revoke `device`: its client (which disconnects it), then its role.
pub fn revoke_commands(device: &DeviceId) -> Vec<Value> {
    vec![
        json!({ "command": "deleteClient", "username": device.as_str() }),
        json!({ "command": "deleteRole", "rolename": role_name(device) }),
    ]
}

impl Provisioner {
    pub fn new(config: &CredentialsConfig, mqtt: &MqttConfig) -> Self {
        let mut admin = mqtt.clone();
        admin.username = Some(config.admin_username.clone());
        admin.password = config.admin_password.clone();
        admin.persistent_session = false;
        Self {
            config: config.clone(),
            admin,
            slots: Semaphore::new(config.max_concurrent.max(1)),
            sequence: AtomicU64::new(0),
        }
    }

    pub fn enabled(&self) -> bool {
        self.config.enabled
    }

    /// Give `device` credentials of `kind`.
    pub async fn provision(
        &self,
        device: &DeviceId,
        kind: CredentialKind,
    ) -> Result<Issued, CredentialsError> {
        let password = (kind == CredentialKind::Password).then(|| {
            Secret::new(Alphanumeric.sample_string(&mut rand::rng(), self.config.password_length))
        });
        let errors = self
            .apply(provision_commands(device, password.as_ref()))
            .await?;
        match (errors[0].as_deref(), errors[1].as_deref()) {
            // A role left by an earlier attempt whose client creation failed is reused.
            (None | Some("Role already exists"), None) => Ok(Issued {
                username: device.to_string(),
                password,
            }),
            (_, Some("Client already exists")) => Err(CredentialsError::Exists),
            (Some(error), _) | (_, Some(error)) => Err(CredentialsError::Refused(error.into())),
        }
    }

    /// Remove `device`'s credentials: the broker disconnects it and refuses it from then
    /// on.
    pub async fn revoke(&self, device: &DeviceId) -> Result<(), CredentialsError> {
        let errors = self.apply(revoke_commands(device)).await?;
        match (errors[0].as_deref(), errors[1].as_deref()) {
            (None, None | Some("Role not found")) => Ok(()),
            (Some("Client not found"), _) => Err(CredentialsError::NotFound),
            (Some(error), _) | (_, Some(error)) => Err(CredentialsError::Refused(error.into())),
        }
    }

    /// Send `commands` and return each one's error (None when it succeeded).
    async fn apply(&self, commands: Vec<Value>) -> Result<Vec<Option<String>>, CredentialsError> {
        if !self.config.enabled {
            return Err(CredentialsError::Disabled);
        }
        let timeout = Duration::from_millis(self.config.timeout_ms);
        let _slot = tokio::time::timeout(timeout, self.slots.acquire())
            .await
            .map_err(|_| CredentialsError::Busy)?
            .map_err(|_| CredentialsError::Busy)?;
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let correlation = format!("{}-{sequence}", self.admin.instance_id());
        tokio::time::timeout(timeout, self.exchange(commands, &correlation, sequence))
            .await
            .map_err(|_| CredentialsError::Timeout(timeout))?
    }

    async fn exchange(
        &self,
        mut commands: Vec<Value>,
        correlation: &str,
        sequence: u64,
    ) -> Result<Vec<Option<String>>, CredentialsError> {
        let options = self
            .admin
            .v5_options(&format!("credentials{sequence}"))
            .map_err(|e| CredentialsError::Connection(e.to_string()))?;
        let (client, mut eventloop) = AsyncClient::new(options, 8);
        let response_topic = format!("{}/response", self.config.control_topic);
        let lost = |e: &dyn std::fmt::Display| CredentialsError::Connection(e.to_string());
        client
            .subscribe(response_topic.clone(), QoS::AtLeastOnce)
            .await
            .map_err(|e| lost(&e))?;
        for (index, command) in commands.iter_mut().enumerate() {
            command["correlationData"] = json!(format!("{correlation}-{index}"));
        }
        let count = commands.len();
        let body = json!({ "commands": commands }).to_string();
        let outcome = async {
            wait_subscribed(&mut eventloop).await?;
            client
                .publish_with_properties(
                    self.config.control_topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    body,
                    PublishProperties::default(),
                )
                .await
                .map_err(|e| lost(&e))?;
            wait_answers(&mut eventloop, &response_topic, correlation, count).await
        }
        .await;
        let _ = client.try_disconnect();
        outcome
    }
}

/// Poll until the answers' subscription is acknowledged.
async fn wait_subscribed(eventloop: &mut EventLoop) -> Result<(), CredentialsError> {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                return match ack.return_codes.first() {
                    Some(SubscribeReasonCode::Success(_)) => Ok(()),
                    other => Err(CredentialsError::Refused(format!(
                        "subscribing to the plugin's answers: {other:?} (is the administrator's account right?)"
                    ))),
                };
            }
            Ok(_) => {}
            Err(error) => return Err(CredentialsError::Connection(error.to_string())),
        }
    }
}

/// Poll until the answers to our `count` commands arrived; each command's error, in order.
async fn wait_answers(
    eventloop: &mut EventLoop,
    topic: &str,
    correlation: &str,
    count: usize,
) -> Result<Vec<Option<String>>, CredentialsError> {
    loop {
        let publish = match eventloop.poll().await {
            Ok(Event::Incoming(Packet::Publish(publish))) => publish,
            Ok(_) => continue,
            Err(error) => return Err(CredentialsError::Connection(error.to_string())),
        };
        if publish.topic.as_ref() != topic.as_bytes() {
            continue;
        }
        if let Some(errors) = match_answers(&publish.payload, correlation, count) {
            return Ok(errors);
        }
    }
}

/// The errors of our commands in `payload` (`{"responses": [...]}`), if it answers them.
pub fn match_answers(
    payload: &[u8],
    correlation: &str,
    count: usize,
) -> Option<Vec<Option<String>>> {
    let answers: Value = serde_json::from_slice(payload).ok()?;
    let responses = answers["responses"].as_array()?;
    (0..count)
        .map(|index| {
            let wanted = format!("{correlation}-{index}");
            responses
                .iter()
                .find(|response| response["correlationData"] == wanted.as_str())
                .map(|response| response["error"].as_str().map(str::to_owned))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn device(id: &str) -> DeviceId {
        DeviceId::parse(id).unwrap()
    }

    #[test]
    fn a_devices_role_reaches_its_own_topics_only() {
        let acls = device_acls(&device("d-1"));
        let pairs: Vec<(&str, &str)> = acls
            .iter()
            .map(|acl| {
                (
                    acl["acltype"].as_str().unwrap(),
                    acl["topic"].as_str().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            pairs,
            [
                ("publishClientSend", "devices/d-1/telemetry"),
                ("publishClientSend", "devices/d-1/state"),
                ("publishClientSend", "devices/d-1/status"),
                ("subscribeLiteral", "devices/d-1/commands"),
                ("subscribeLiteral", "devices/d-1/desired"),
                ("publishClientSend", "devices/d-1/acks"),
            ]
        );
        assert!(acls.iter().all(|acl| acl["allow"] == true));
    }

    #[test]
    fn provisioning_creates_the_role_before_the_client_that_holds_it() {
        let password = Secret::new("pw");
        let commands = provision_commands(&device("d-1"), Some(&password));
        assert_eq!(commands[0]["command"], "createRole");
        assert_eq!(commands[1]["command"], "createClient");
        assert_eq!(commands[1]["username"], "d-1");
        assert_eq!(commands[1]["password"], "pw");
        assert_eq!(commands[1]["roles"][0]["rolename"], "fleetwatch-device-d-1");
        let by_certificate = provision_commands(&device("d-1"), None);
        assert!(by_certificate[1].get("password").is_none());
        let revoke = revoke_commands(&device("d-1"));
        assert_eq!(revoke[0]["command"], "deleteClient");
        assert_eq!(revoke[1]["command"], "deleteRole");
    }

    #[test]
    fn answers_are_matched_by_correlation_data() {
        let payload = br#"{"responses":[
            {"command":"createClient","error":"Client already exists","correlationData":"x-1"},
            {"command":"createRole","correlationData":"x-0"},
            {"command":"createRole","correlationData":"other-0"}]}"#;
        assert_eq!(
            match_answers(payload, "x", 2),
            Some(vec![None, Some("Client already exists".to_owned())])
        );
        assert_eq!(match_answers(payload, "y", 1), None);
        assert_eq!(match_answers(b"not json", "x", 1), None);
    }

    #[tokio::test]
    async fn a_disabled_provisioner_refuses_without_connecting() {
        let provisioner = Provisioner::new(&CredentialsConfig::default(), &MqttConfig::default());
        let refused = provisioner.revoke(&device("d-1")).await.unwrap_err();
        assert!(matches!(refused, CredentialsError::Disabled), "{refused}");
    }
}
